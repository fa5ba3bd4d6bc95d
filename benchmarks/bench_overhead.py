"""Suite 5: the parallel path's fixed cost per call, with an `f` that costs nothing.

Two payloads: a tiny array alone, and the same trivial `f` closing over the seed net (so
its 0.64 MB of parameters travel to every worker, as in a real call on that net). The
time above the serial reference's is what each gradient call pays for going parallel.
"""
import numpy as np
import pytest

import engine
from measuring import record, timed
from workloads import net_problem, worker_counts

GROUPS = {"tiny": "5a per-call overhead: trivial f, 8 entries",
          "seed net": "5b per-call overhead: trivial f carrying the seed net (0.64 MB)"}
ROUNDS = 60
WORKERS = worker_counts()
EXPECTED = np.array([1.0] + [0.0] * 7)


def _problem(payload):
    """A trivial `f` and its 8-entry `x`; with the seed net, `f` closes over the net too."""
    if payload == "tiny":
        return (lambda w: float(w[0])), np.zeros(8)
    net = net_problem(1).net
    x = net.params["b1"][:8]
    return (lambda w: float(net.params["b1"][0])), x


@pytest.mark.parametrize("payload", list(GROUPS))
def test_serial_reference(benchmark, payload):
    benchmark.group = GROUPS[payload]
    f, x = _problem(payload)
    grad = timed(benchmark, engine.numerical_gradient, f, x, rounds=ROUNDS, warmup_rounds=5)
    record(benchmark, suite="5", case="serial reference", role="baseline", workers=1,
           entries=x.size)
    assert np.array_equal(grad, EXPECTED)


@pytest.mark.parametrize("backend", ["loky", "threading"])
@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("payload", list(GROUPS))
def test_parallel_overhead(benchmark, payload, workers, backend):
    benchmark.group = GROUPS[payload]
    f, x = _problem(payload)
    options = dict(workers=workers, backend=backend, evaluator="loop")
    grad = timed(benchmark, engine.parallel_numerical_gradient, f, x, **options, rounds=ROUNDS,
                 warmup_rounds=5)
    record(benchmark, suite="5", case=f"parallel, {backend}", workers=workers, backend=backend,
           entries=x.size)
    assert np.array_equal(grad, EXPECTED)
