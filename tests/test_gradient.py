"""The resident `Gradient`: exact call after call, shipped once, values in place, its plan, its lifetime."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize, rosen

from engine import Gradient, ThreeLayerNet, load_embedded_mnist, numerical_gradient
from engine._errors import StateNotShippedError

BACKENDS = ["loky", "threading"]


def same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a.dtype == b.dtype and np.array_equal(a, b)


class CountsUnpickling:
    """A loss that writes a line to `log` each time a copy of it is unpickled (shipped)."""

    def __init__(self, log):
        self.log = str(log)

    def __call__(self, w, scale=1.0):
        return float(scale * np.sum(np.cos(w) * np.arange(1, w.size + 1).reshape(w.shape)))

    def __reduce__(self):
        return _unpickled, (self.log,)


def _unpickled(log):
    with open(log, "a") as file:
        file.write(f"{os.getpid()}\n")
    return CountsUnpickling(log)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_call_after_call_and_shipped_once(tmp_path, backend):
    f = CountsUnpickling(tmp_path / "unpickled")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 7))
    with Gradient(f, workers=2, backend=backend, dispatch="parallel") as g:
        for call in range(6):
            if call % 2:
                w += 0.25 * rng.standard_normal(w.shape)      # new values in place
            else:
                w = rng.standard_normal(w.shape)               # a fresh array, same structure
            scale = 1.0 + call
            assert same(g(w, scale), numerical_gradient(lambda v, s=scale: f(v, s), w))
    shipped = (tmp_path / "unpickled").read_text().split()
    assert len(shipped) == 2, f"f was unpickled {len(shipped)} times, not once per worker"


def test_a_changed_structure_is_shipped_again_and_exact(tmp_path):
    f = CountsUnpickling(tmp_path / "unpickled")
    rng = np.random.default_rng(1)
    with Gradient(f, workers=2, dispatch="parallel") as g:
        for x in (rng.standard_normal(9), rng.standard_normal((3, 4)),
                  rng.standard_normal((3, 4)).astype(np.float32),
                  np.asfortranarray(rng.standard_normal((3, 4))), rng.standard_normal(9)):
            assert same(g(x), numerical_gradient(f, x))
    assert len((tmp_path / "unpickled").read_text().split()) == 2 * 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_books_closure_sees_new_values_in_place_and_fresh(backend):
    train, _ = load_embedded_mnist()
    net = ThreeLayerNet(input_size=784, hidden_size=8, seed=0)
    x, t = train.images[:2], train.labels[:2]
    f = lambda w: net.loss(x, t)  # noqa: E731  the book's pattern: f reads the net, not w
    with Gradient(f, workers=2, backend=backend, evaluator="loop", dispatch="parallel") as g:
        for step in range(3):
            got = g(net.params)
            assert same(got, numerical_gradient(f, net.params))
            if step == 0:
                for name in net.params:        # SGD in place
                    net.params[name] -= 0.5 * got[name]
            else:                              # SGD into fresh arrays of the same dict
                for name in list(net.params):
                    net.params[name] = net.params[name] - 0.5 * got[name]


def test_model_loss_with_batches_as_args_is_batched_and_exact():
    train, _ = load_embedded_mnist()
    net = ThreeLayerNet(input_size=784, hidden_size=10, seed=2)
    with Gradient(net.model.loss, workers=2, dispatch="parallel") as parallel, \
            Gradient(net.model.loss, workers=1) as serial:
        for lo in (0, 3, 7):
            x, t = train.images[lo:lo + 3], train.labels[lo:lo + 3]
            assert same(parallel(net.params, x, t), serial(net.params, x, t))
        with pytest.raises(TypeError, match="params, the inputs and the labels"):
            parallel(net.params, x)


@pytest.mark.parametrize("scheme", ["central", "forward", "central4"])
@pytest.mark.parametrize("workers", [1, 2])
def test_value_and_grad(scheme, workers):
    w = np.linspace(-1, 1, 11)
    f = lambda v, a: float(np.sum(np.exp(a * v)))  # noqa: E731
    with Gradient(f, workers=workers, scheme=scheme, dispatch="parallel") as g:
        value, grad = g.value_and_grad(w, 0.7)
    assert value == f(w, 0.7)
    assert same(grad, numerical_gradient(lambda v: f(v, 0.7), w, scheme=scheme))


class LogsEvaluations:
    """Appends a line to `log` per call of f, in whatever process runs it."""

    def __init__(self, log):
        self.log = str(log)

    def __call__(self, w):
        with open(self.log, "a") as file:
            file.write("x\n")
        return float(np.sum(w ** 3))


@pytest.mark.parametrize("workers", [1, 2])
def test_forward_scheme_evaluates_f_of_x_once_per_call(tmp_path, workers):
    log = tmp_path / "calls"
    f = LogsEvaluations(log)
    w = np.linspace(0, 1, 9)
    with Gradient(f, workers=workers, scheme="forward", dispatch="parallel",
                  check_state=False) as g:
        g(w)
        log.unlink()
        g.value_and_grad(w)
    assert len(log.read_text().split()) == w.size + 1


def test_minimize_converges_on_rosenbrock_with_jac_and_with_value_and_grad():
    x0 = np.full(50, -0.5)
    with Gradient(rosen, workers=2, dispatch="parallel") as g:
        by_jac = minimize(rosen, x0, jac=g, method="L-BFGS-B", options={"maxiter": 3000})
        joint = minimize(g.value_and_grad, x0, jac=True, method="L-BFGS-B",
                         options={"maxiter": 3000})
    for result in (by_jac, joint):
        assert result.success, result.message
        assert np.allclose(result.x, 1.0, atol=1e-3)


def test_minimize_passes_args_through():
    def f(v, centre, weight):
        return float(weight * np.sum((v - centre) ** 2))

    centre = np.arange(5.0)
    with Gradient(f, workers=2, dispatch="parallel") as g:
        result = minimize(f, np.zeros(5), args=(centre, 2.0), jac=g, method="BFGS")
    assert result.success and np.allclose(result.x, centre, atol=1e-6)


def test_plan_keeps_a_cheap_f_in_process_and_sends_a_costly_one_to_the_workers():
    import time

    w = np.zeros(8)
    with Gradient(lambda v: float(v.sum()), workers=2) as cheap:
        plan = cheap.calibrate(w)
        # The faster measured side wins (in-process here, unless a loaded machine says otherwise).
        faster = "in-process" if plan.in_process_seconds <= plan.parallel_seconds else "parallel"
        assert plan.where == faster and "measured" in plan.reason
        assert same(cheap(w), np.ones(8))
    slow = lambda v: time.sleep(0.002) or float(v.sum())  # noqa: E731  ~4 s in-process
    with Gradient(slow, workers=2) as costly:
        assert costly.plan.where == "measuring"
        assert same(costly(np.zeros(1000)), np.ones(1000))
        assert costly.plan.where == "parallel" and "estimated" in costly.plan.reason
    with Gradient(lambda v: float(v.sum()), workers=2, dispatch="parallel") as forced:
        forced(w)
        assert forced.plan.where == "parallel"


def test_state_probe_runs_when_shipped_and_catches_a_module_level_net():
    import _module_state

    params = _module_state.NET_PARAMS
    with Gradient(_module_state.loss_of_module_net, workers=2, dispatch="parallel") as g:
        with pytest.raises(StateNotShippedError, match="did not travel"):
            g(params["w"])


def pool_pids(g):
    return [p.pid for p in g._link.pool._processes]


def shared_files(pid):
    return [p for p in Path("/dev/shm").glob(f"numgrad-{pid}-*")]


def test_close_stops_the_workers_and_frees_the_shared_memory():
    w = np.ones(6)
    g = Gradient(lambda v: float(np.sum(v ** 2)), workers=2, dispatch="parallel")
    g(w)
    pids = pool_pids(g)
    assert len(pids) == 2 and not shared_files(os.getpid())
    g.close()
    g.close()   # idempotent
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    with pytest.raises(ValueError, match="closed"):
        g(w)


def test_a_gradient_is_not_picklable_by_accident_but_a_net_that_used_one_is():
    net = ThreeLayerNet(input_size=4, hidden_size=3, output_size=2, seed=0)
    net.numerical_gradient(np.ones(4), 1, workers=2)
    clone = pickle.loads(pickle.dumps(net))
    assert same(clone.params, net.params)
