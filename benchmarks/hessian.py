"""Hessians (issue 22): accuracy and evaluation counts against the peers, wall time, scaling.

Three parts, each saved in one JSON:

- ``accuracy``: on Rosenbrock (n = 12, SciPy's ``rosen_hess`` as the truth), a logistic
  regression's negative log-likelihood at its maximum (n = 6, ``X.T diag(p(1-p)) X``) and a
  log-sum-exp of a linear map (n = 10, ``A.T (diag(p) - p p.T) A``): the error
  ``max |H - H_true| / max |H_true|`` and the number of evaluations (of `f`, or of the
  gradient for ``grad=``) of ours (central, forward, and central from the analytic gradient,
  default steps) against statsmodels' ``approx_hess1/2/3``, numdifftools' ``Hessian`` and
  optimagic's ``second_derivative`` (defaults). Evaluations are counted in this process
  (ours with ``workers=1``, optimagic with ``n_cores=1``).
- ``wall``: n = 24 on Rosenbrock made to cost ~1 ms per call (`SlowRosen`): ours at 2
  workers (one-shot `engine.hessian` and a resident `engine.Hessian`) against every peer,
  optimagic also with ``n_cores=2``. Every round times every case once, the order rotated by
  one each round, after one untimed call of each (pools started); the medians are compared.
- ``scaling``: the same objective, ours at 1 worker and at 2 (``dispatch="parallel"``),
  interleaved; checked bit-identical.

    python benchmarks/hessian.py --rounds 7 --out benchmarks/results/local/hessian.json
    python benchmarks/hessian.py --only wall --skip numdifftools --rounds 3 --out ...   # no 1-min case
    python benchmarks/hessian.py --quick --out /tmp/hessian.json   # tiny, every case once
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.optimize import minimize, rosen, rosen_der, rosen_hess

import engine
from measuring import Interference, describe_machine
from workloads import limit_blas_threads

SEED = 20261205
SLOW_SECONDS = 1e-3   # the cost of one call of the "~1 ms" objective


class Counted:
    """`f` counting its calls (in this process)."""

    def __init__(self, f: Callable):
        self.f, self.calls = f, 0

    def __call__(self, x, *args):
        self.calls += 1
        return self.f(x, *args)


# --- the functions and their exact Hessians -------------------------------------------------

def rosenbrock_problem(n: int = 12):
    x = np.random.default_rng(SEED).uniform(-1.5, 1.5, n)
    return "Rosenbrock n=12", rosen, rosen_der, x, rosen_hess(x)


class LogitLoss:
    """A logistic regression's negative log-likelihood, its gradient and Hessian."""

    def __init__(self, rows: int = 500, columns: int = 6, seed: int = SEED):
        rng = np.random.default_rng(seed)
        self.X = np.column_stack([np.ones(rows), rng.standard_normal((rows, columns - 1))])
        beta = np.linspace(-1.0, 1.0, columns)
        self.y = (rng.random(rows) < 1 / (1 + np.exp(-self.X @ beta))).astype(np.float64)

    def __call__(self, beta: np.ndarray) -> float:
        z = self.X @ beta
        return float(np.sum(np.logaddexp(0.0, z) - self.y * z))

    def gradient(self, beta: np.ndarray) -> np.ndarray:
        return self.X.T @ (1 / (1 + np.exp(-self.X @ beta)) - self.y)

    def hessian(self, beta: np.ndarray) -> np.ndarray:
        p = 1 / (1 + np.exp(-self.X @ beta))
        return (self.X * (p * (1 - p))[:, None]).T @ self.X

    def fit(self) -> np.ndarray:
        start = np.zeros(self.X.shape[1])
        return minimize(self, start, jac=self.gradient, method="BFGS", options={"gtol": 1e-10}).x


def logit_problem():
    loss = LogitLoss()
    beta = loss.fit()
    return "logit likelihood n=6 (at the MLE)", loss, loss.gradient, beta, loss.hessian(beta)


class LogSumExp:
    """``log(sum(exp(A x)))``: softmax's normaliser of a linear map."""

    def __init__(self, rows: int = 40, columns: int = 10, seed: int = SEED):
        self.A = np.random.default_rng(seed + 1).standard_normal((rows, columns))

    def __call__(self, x: np.ndarray) -> float:
        z = self.A @ x
        top = z.max()
        return float(top + np.log(np.sum(np.exp(z - top))))

    def _p(self, x):
        z = self.A @ x
        e = np.exp(z - z.max())
        return e / e.sum()

    def gradient(self, x: np.ndarray) -> np.ndarray:
        return self.A.T @ self._p(x)

    def hessian(self, x: np.ndarray) -> np.ndarray:
        p = self._p(x)
        return self.A.T @ (np.diag(p) - np.outer(p, p)) @ self.A


def logsumexp_problem():
    lse = LogSumExp()
    x = np.random.default_rng(SEED + 2).uniform(-0.5, 0.5, 10)
    return "log-sum-exp of A x, n=10", lse, lse.gradient, x, lse.hessian(x)


class SlowRosen:
    """Rosenbrock plus ~`seconds` of arithmetic that does not change its value."""

    def __init__(self, seconds: float = SLOW_SECONDS):
        per_loop = min(_seconds(lambda: self._burn(0.5), 20) for _ in range(5))   # least disturbed
        self.loops = max(1, round(seconds / per_loop))

    @staticmethod
    def _burn(seed: float, loops: int = 200) -> float:
        s = seed
        for k in range(loops):
            s = math.sin(s + k)
        return s

    def __call__(self, x: np.ndarray) -> float:
        s = float(x[0])
        for _ in range(self.loops):
            s = self._burn(s)
        return float(rosen(x)) + 0.0 * s


def _seconds(call: Callable, times: int) -> float:
    started = time.perf_counter()
    for _ in range(times):
        call()
    return (time.perf_counter() - started) / times


# --- the methods --------------------------------------------------------------------------------

def ours(scheme: str, from_gradient: bool = False):
    def run(f, g, x):
        if from_gradient:
            return engine.hessian(None, x, grad=g, scheme=scheme, workers=1)
        return engine.hessian(f, x, scheme=scheme, workers=1)
    return run


def statsmodels_method(name: str):
    def run(f, g, x):
        from statsmodels.tools import numdiff
        return getattr(numdiff, name)(x, f)
    return run


def numdifftools_method(f, g, x):
    import numdifftools
    return numdifftools.Hessian(f)(x)


def optimagic_method(n_cores: int = 1):
    def run(f, g, x):
        import optimagic
        return optimagic.second_derivative(f, x, n_cores=n_cores).derivative
    return run


ACCURACY_METHODS = {
    "ours central (h='auto')": (ours("central"), False),
    "ours forward (h='auto')": (ours("forward"), False),
    "ours central from the gradient (grad=)": (ours("central", True), True),
    "statsmodels approx_hess1": (statsmodels_method("approx_hess1"), False),
    "statsmodels approx_hess2": (statsmodels_method("approx_hess2"), False),
    "statsmodels approx_hess3": (statsmodels_method("approx_hess3"), False),
    "numdifftools Hessian": (numdifftools_method, False),
    "optimagic second_derivative": (optimagic_method(), False),
}


def accuracy() -> list[dict]:
    rows = []
    for problem in (rosenbrock_problem, logit_problem, logsumexp_problem):
        name, f, g, x, exact = problem()
        for method, (run, uses_gradient) in ACCURACY_METHODS.items():
            counted_f, counted_g = Counted(f), Counted(g)
            got = np.asarray(run(counted_f, counted_g, x.copy()), dtype=np.float64)
            error = float(np.abs(got - exact).max() / np.abs(exact).max())
            rows.append({"function": name, "method": method, "relative_error": error,
                         "evaluations": counted_g.calls if uses_gradient else counted_f.calls,
                         "of": "gradient" if uses_gradient else "f",
                         "symmetric": bool(np.array_equal(got, got.T))})
            print(f"{name:36} {method:42} {error:9.2e} {rows[-1]['evaluations']:6d} "
                  f"{rows[-1]['of']}", flush=True)
    return rows


def wall_cases(n: int, f: SlowRosen, x: np.ndarray, resident) -> dict:
    import numdifftools
    import optimagic
    from statsmodels.tools import numdiff
    return {
        "ours hessian, 2 workers": lambda: engine.hessian(f, x, workers=2, dispatch="parallel"),
        "ours resident Hessian, 2 workers": lambda: resident(x),
        "ours hessian forward, 2 workers": lambda: engine.hessian(f, x, scheme="forward", workers=2,
                                                                  dispatch="parallel"),
        "statsmodels approx_hess3": lambda: numdiff.approx_hess3(x, f),
        "statsmodels approx_hess2": lambda: numdiff.approx_hess2(x, f),
        "numdifftools Hessian": lambda: numdifftools.Hessian(f)(x),
        "optimagic second_derivative, n_cores=1": lambda: optimagic.second_derivative(
            f, x, n_cores=1).derivative,
        "optimagic second_derivative, n_cores=2": lambda: optimagic.second_derivative(
            f, x, n_cores=2).derivative,
    }


def interleaved(cases: dict[str, Callable], rounds: int) -> dict:
    """Every case once per round, the order rotated by one each round: seconds and disturbance."""
    names = list(cases)
    seconds = {name: [] for name in names}
    shares = {name: [] for name in names}
    results = {}
    for name in names:   # untimed: starts the pools (ours, optimagic's joblib workers)
        cases[name]()
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            with Interference() as load:
                started = time.perf_counter()
                results[name] = cases[name]()
                seconds[name].append(time.perf_counter() - started)
            shares[name].append(load.share)
            print(f"round {r + 1}/{rounds} {name}: {seconds[name][-1]:.3f} s", flush=True)
    return {"seconds": seconds, "median": {k: statistics.median(v) for k, v in seconds.items()},
            "other_processes_cpu_share": shares, "results": results}


def wall(rounds: int, n: int, skip: list[str]) -> dict:
    f = SlowRosen()
    x = np.random.default_rng(SEED).uniform(-1.5, 1.5, n)
    per_call = min(_seconds(lambda: f(x), 20) for _ in range(3))
    exact = rosen_hess(x)
    with engine.Hessian(f, workers=2, dispatch="parallel") as resident:
        cases = {name: case for name, case in wall_cases(n, f, x, resident).items()
                 if not any(word in name for word in skip)}
        timing = interleaved(cases, rounds)
    errors = {name: float(np.abs(np.asarray(h) - exact).max() / np.abs(exact).max())
              for name, h in timing.pop("results").items()}
    return {"n": n, "seconds_per_call": per_call, **timing, "relative_error": errors}


def scaling(rounds: int, n: int) -> dict:
    f = SlowRosen()
    x = np.random.default_rng(SEED).uniform(-1.5, 1.5, n)
    with engine.Hessian(f, workers=1) as one, \
            engine.Hessian(f, workers=2, dispatch="parallel") as two:
        timing = interleaved({"1 worker": lambda: one(x), "2 workers": lambda: two(x)}, rounds)
    results = timing.pop("results")
    median = timing["median"]
    return {"n": n, **timing, "speedup": median["1 worker"] / median["2 workers"],
            "identical": bool(np.array_equal(results["1 worker"], results["2 workers"]))}


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=24, help="parameters of the timed Hessians")
    parser.add_argument("--only", choices=["accuracy", "wall", "scaling"], action="append")
    parser.add_argument("--quick", action="store_true", help="every case once, n = 4")
    parser.add_argument("--skip", action="append", default=[],
                        help="leave out the wall-time cases whose name contains this")
    parser.add_argument("--out", type=Path, required=True)
    options = parser.parse_args(argv)
    limit_blas_threads()
    rounds, n = (1, 4) if options.quick else (options.rounds, options.n)
    parts = options.only or ["accuracy", "wall", "scaling"]
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": describe_machine(), "load_average_before": load_average(),
           "command": " ".join(sys.argv)}
    if "accuracy" in parts:
        out["accuracy"] = accuracy()
    if "wall" in parts:
        out["wall"] = wall(rounds, n, options.skip)
    if "scaling" in parts:
        out["scaling"] = scaling(rounds, n)
    out["load_average_after"] = load_average()
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(out, indent=1, default=str))
    for part in ("wall", "scaling"):
        if part in out:
            print(part, json.dumps(out[part]["median"], indent=1))
    if "scaling" in out:
        print(f"speedup 2 vs 1 worker: {out['scaling']['speedup']:.2f}, "
              f"identical: {out['scaling']['identical']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
