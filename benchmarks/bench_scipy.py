"""Suite 3: our engine against SciPy's map-based parallel finite differences.

SciPy's ``approx_derivative(fun, x0, method="3-point", workers=pool.map)`` builds a perturbed
copy of the whole vector `x0` for every evaluation and ships it through the pool, and the
pool pickles `fun` once per chunk of work. Ours ships ``(f, x)`` once per worker and call.

3a. A black box of about 1 ms per call and 400 parameters (`workloads.OscillatorFit`):
    IPC is cheap, so SciPy's design costs little; both should scale alike.
3b. The seed net (79,510 parameters, ~50 us per loss): SciPy needs one flat vector of all
    of them, 0.64 MB per perturbed copy. It cannot run the full gradient at all (Pool.map
    lists every copy first: 2 x 79,510 x 0.64 MB = 101 GB), so its first 100 entries are
    timed through SciPy's own loop and scaled (`workloads.scipy_leading_entries`); and, as
    SciPy's best case, a 1,000-entry window differentiated as a short vector of its own.

SciPy's step differs from ours in the last bits ((x+h) - (x-h) instead of 2h), so its
gradient is compared to ours with a tolerance; our parallel results equal serial exactly.
"""
import numpy as np
import pytest

import engine
from measuring import record, timed
from workloads import (H, POOL_SIZE, TOTAL_ENTRIES, FlatNetLoss, OscillatorFit, WindowLoss,
                       net_problem, relative_error, scipy_gradient, scipy_leading_entries,
                       serial_window_gradient, worker_counts)

BLACK_BOX = "3a black box: ODE fit, 400 parameters, ~1 ms per call"
SEED_NET = "3b seed net vs SciPy, scaled to all 79,510 entries"
SCIPY_TOLERANCE = 1e-9        # relative to max |g|: only the step's rounding differs
NET_ROWS = (50, 4)            # window of w1 rows for our cases (measured, with --benchmark-disable)
SCIPY_WINDOW_ROWS = (10, 2)   # SciPy's short-vector case
SCIPY_FULL_ENTRIES = 100      # SciPy's full-vector case: the first 100 entries of theta (b1)


@pytest.fixture(scope="module")
def black_box():
    fit = OscillatorFit()
    return fit, engine.numerical_gradient(fit, fit.start.copy(), H)


@pytest.mark.benchmark(group=BLACK_BOX)
def test_black_box_serial(benchmark, black_box):
    fit, reference = black_box
    grad = timed(benchmark, engine.numerical_gradient, fit, fit.start.copy(), H, rounds=5,
                 warmup_rounds=1)
    record(benchmark, suite="3a", case="ours, serial reference", role="baseline", workers=1,
           entries=fit.size)
    assert np.array_equal(grad, reference)


@pytest.mark.benchmark(group=BLACK_BOX)
@pytest.mark.parametrize("workers", [w for w in worker_counts() if w > 1] or [1])
def test_black_box_ours(benchmark, black_box, workers):
    fit, reference = black_box
    options = dict(workers=workers, evaluator="loop", h=H)
    grad = timed(benchmark, engine.parallel_numerical_gradient, fit, fit.start.copy(), **options,
                 rounds=5, warmup_rounds=1)
    record(benchmark, suite="3a", case="ours, parallel", workers=workers, backend="loky",
           entries=fit.size)
    assert np.array_equal(grad, reference)


@pytest.mark.benchmark(group=BLACK_BOX)
@pytest.mark.parametrize("pooled", [False, True], ids=["serial", "pool2"])
def test_black_box_scipy(benchmark, black_box, process_pool, pooled):
    fit, reference = black_box
    workers = process_pool.map if pooled else None
    grad = timed(benchmark, scipy_gradient, fit, fit.start.ravel(), workers, rounds=5,
                 warmup_rounds=1)
    how = "pool.map" if pooled else "serial"
    record(benchmark, suite="3a", case=f"SciPy approx_derivative, {how}",
           workers=POOL_SIZE if pooled else 1,
           backend="multiprocessing.Pool" if pooled else "serial", evaluator="scipy",
           entries=fit.size)
    assert relative_error(grad.reshape(reference.shape), reference) <= SCIPY_TOLERANCE


@pytest.mark.benchmark(group=SEED_NET)
def test_seed_net_serial(benchmark):
    rows = NET_ROWS[benchmark.disabled]
    problem = net_problem(1, rows)
    grad = timed(benchmark, engine.numerical_gradient, problem.f, problem.window, H, rounds=5,
                 warmup_rounds=1)
    record(benchmark, suite="3b", case="ours, serial reference", role="baseline", workers=1,
           entries=problem.entries, total_entries=TOTAL_ENTRIES, batch=1)
    assert np.array_equal(grad, serial_window_gradient(1, rows))


@pytest.mark.benchmark(group=SEED_NET)
def test_seed_net_ours(benchmark):
    rows = NET_ROWS[benchmark.disabled]
    problem = net_problem(1, rows)
    options = dict(workers=2, evaluator="loop", h=H)
    grad = timed(benchmark, engine.parallel_numerical_gradient, problem.f, problem.window,
                 **options, rounds=5, warmup_rounds=1)
    record(benchmark, suite="3b", case="ours, parallel", workers=2, backend="loky",
           entries=problem.entries, total_entries=TOTAL_ENTRIES, batch=1)
    assert np.array_equal(grad, serial_window_gradient(1, rows))


@pytest.mark.benchmark(group=SEED_NET)
def test_seed_net_scipy_window(benchmark, process_pool):
    rows = SCIPY_WINDOW_ROWS[benchmark.disabled]
    problem = net_problem(1, rows)
    x0 = problem.window.ravel().copy()
    grad = timed(benchmark, scipy_gradient, WindowLoss(problem), x0, process_pool.map, rounds=5,
                 warmup_rounds=1)
    record(benchmark, suite="3b", case="SciPy pool.map, short vector (window only)",
           workers=POOL_SIZE, backend="multiprocessing.Pool", evaluator="scipy",
           entries=problem.entries, total_entries=TOTAL_ENTRIES, batch=1,
           shipped_bytes_per_call=2 * problem.entries * x0.nbytes)
    reference = serial_window_gradient(1, rows)
    assert relative_error(grad.reshape(reference.shape), reference) <= SCIPY_TOLERANCE


@pytest.mark.benchmark(group=SEED_NET)
def test_seed_net_scipy_full_vector(benchmark, process_pool):
    problem = net_problem(1)
    fun = FlatNetLoss(problem.net, problem.x, problem.t)
    theta = fun.flatten()
    grad = timed(benchmark, scipy_leading_entries, fun, theta, SCIPY_FULL_ENTRIES, process_pool.map,
                 rounds=3, warmup_rounds=1)
    record(benchmark, suite="3b", case="SciPy pool.map, full vector (first 100 entries)",
           workers=POOL_SIZE, backend="multiprocessing.Pool", evaluator="scipy",
           entries=SCIPY_FULL_ENTRIES, total_entries=TOTAL_ENTRIES, batch=1,
           shipped_bytes_per_call=2 * SCIPY_FULL_ENTRIES * theta.nbytes,
           listed_bytes_full_gradient=2 * TOTAL_ENTRIES * theta.nbytes)
    reference = engine.numerical_gradient(problem.f, problem.net.params["b1"], H)
    assert relative_error(grad, reference) <= SCIPY_TOLERANCE
    assert np.array_equal(problem.net.params["b1"], net_problem(1).net.params["b1"])
