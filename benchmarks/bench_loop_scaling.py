"""Suite 1: the seed net's gradient by the loop evaluator: serial vs 1..N workers, loky vs threads.

Beside the engine's serial reference: the book's own loop in plain numpy (what the engine's
checks cost), and a ceiling with no engine at all, the book's loop split over 2 plain
processes (what this machine gives two processes). Times a window of w1 rows (see
`workloads.NetProblem`) and records the factor that scales it to all 79,510 entries: with
the loop evaluator each entry costs the same two forward passes, so the scaled figure is
the full gradient's time up to the fixed per-call cost (suite 5), which the scaling
multiplies too and so only makes the parallel cases look slower.
"""
import numpy as np
import pytest

import engine
from measuring import record, timed
from workloads import (H, POOL_SIZE, TOTAL_ENTRIES, book_numerical_gradient,
                       hand_rolled_parallel, net_problem, prepare_processes, relative_error,
                       serial_window_gradient, worker_counts)

GROUP = "1 seed net, loop evaluator, 1 image"
ROWS, ROWS_CHECK = 100, 4   # w1 rows timed: 10,000 entries (~1.5 s serially); 400 when disabled
ROUNDS = 5
WORKERS = worker_counts()


def _rows(benchmark):
    return ROWS_CHECK if benchmark.disabled else ROWS


@pytest.mark.benchmark(group=GROUP)
def test_serial_reference(benchmark):
    rows = _rows(benchmark)
    problem = net_problem(1, rows)
    grad = timed(benchmark, engine.numerical_gradient, problem.f, problem.window, H, rounds=ROUNDS,
                 warmup_rounds=1)
    record(benchmark, suite="1", case="serial reference", role="baseline", workers=1,
           entries=problem.entries, total_entries=TOTAL_ENTRIES, batch=1)
    assert np.array_equal(grad, serial_window_gradient(1, rows))
    assert relative_error(grad, problem.backprop_window()) < 1e-6


@pytest.mark.benchmark(group=GROUP)
def test_book_loop(benchmark):
    """The teaching text's own loop, without the engine's checks: the cost of those checks."""
    rows = _rows(benchmark)
    problem = net_problem(1, rows)
    grad = timed(benchmark, book_numerical_gradient, problem.f, problem.window, H, rounds=ROUNDS,
                 warmup_rounds=1)
    record(benchmark, suite="1", case="the book's loop (plain numpy)", workers=1,
           backend="book", entries=problem.entries, total_entries=TOTAL_ENTRIES, batch=1)
    assert np.array_equal(grad, serial_window_gradient(1, rows))


@pytest.mark.benchmark(group=GROUP)
def test_hand_rolled_ceiling(benchmark, process_pool):
    """What this machine gives: the book's loop split over 2 plain processes, no engine."""
    rows = _rows(benchmark)
    prepare_processes(process_pool, 1, rows)
    grad = timed(benchmark, hand_rolled_parallel, process_pool, 1, rows, POOL_SIZE,
                 rounds=ROUNDS, warmup_rounds=1)
    record(benchmark, suite="1", case="ceiling: book's loop in 2 plain processes",
           workers=POOL_SIZE, backend="multiprocessing.Pool",
           entries=rows * 100, total_entries=TOTAL_ENTRIES, batch=1,
           series="ceiling: book's loop in plain processes")
    assert np.array_equal(grad, serial_window_gradient(1, rows))


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("backend", ["loky", "threading"])
@pytest.mark.parametrize("workers", WORKERS)
def test_parallel_loop(benchmark, workers, backend):
    rows = _rows(benchmark)
    problem = net_problem(1, rows)
    options = dict(workers=workers, backend=backend, evaluator="loop", h=H)
    grad = timed(benchmark, engine.parallel_numerical_gradient, problem.f, problem.window,
                 **options, rounds=ROUNDS, warmup_rounds=1)
    record(benchmark, suite="1", case=f"parallel, {backend}", workers=workers, backend=backend,
           entries=problem.entries, total_entries=TOTAL_ENTRIES, batch=1,
           series=f"loop evaluator, {backend}")
    assert np.array_equal(grad, serial_window_gradient(1, rows))
