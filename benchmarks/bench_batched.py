"""Suite 2: the batched evaluator against the loop evaluator: one image, batches of 10 and 100.

The batched evaluator computes the full gradient; the serial loop reference is timed on a
window of w1 rows and scaled to all 79,510 entries (every entry costs it two forward passes).
The floor, backprop, sits in the same groups (bench_backprop.py), so every batched case has
its ratio to backprop timed in the same run.
"""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import engine
from measuring import record, timed
from workloads import (BATCH_GROUPS as GROUPS, BATCHES, H, TOTAL_ENTRIES, available_cores,
                       batched_gradient, book_numerical_gradient, net_problem,
                       serial_window_gradient)

LOOP_ROWS = {1: (100, 4), 10: (10, 2), 100: (2, 1)}      # (measured, with --benchmark-disable)
BATCHED_ROUNDS = {1: 30, 10: 15, 100: 7}
WORKERS = sorted({1, 2, available_cores()})


@pytest.mark.parametrize("batch", BATCHES)
def test_loop_serial(benchmark, batch):
    benchmark.group = GROUPS[batch]
    rows = LOOP_ROWS[batch][benchmark.disabled]
    problem = net_problem(batch, rows)
    grad = timed(benchmark, engine.numerical_gradient, problem.f, problem.window, H, rounds=5,
                 warmup_rounds=1)
    record(benchmark, suite="2", case="loop, serial reference", role="baseline", workers=1,
           entries=problem.entries, total_entries=TOTAL_ENTRIES, batch=batch)
    assert np.array_equal(grad, serial_window_gradient(batch, rows))


@pytest.mark.parametrize("batch", BATCHES)
def test_book_loop(benchmark, batch):
    benchmark.group = GROUPS[batch]
    rows = LOOP_ROWS[batch][benchmark.disabled]
    problem = net_problem(batch, rows)
    grad = timed(benchmark, _book_loop_one_blas_thread, problem.f, problem.window, H, rounds=5,
                 warmup_rounds=1)
    record(benchmark, suite="2", case="the book's loop (plain numpy)", workers=1,
           backend="book", entries=problem.entries, total_entries=TOTAL_ENTRIES, batch=batch)
    assert np.array_equal(grad, serial_window_gradient(batch, rows))


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("workers", WORKERS)
def test_batched(benchmark, batch, workers):
    benchmark.group = GROUPS[batch]
    problem = net_problem(batch)
    f = problem.net.loss_function(problem.x, problem.t)
    options = dict(workers=workers, evaluator="batched", h=H)
    grads = timed(benchmark, engine.parallel_numerical_gradient, f, problem.net.params, **options,
                  rounds=BATCHED_ROUNDS[batch], warmup_rounds=1)
    record(benchmark, suite="2", case="batched", workers=workers, backend="loky",
           evaluator="batched", entries=TOTAL_ENTRIES, batch=batch,
           series=f"batched evaluator, loky, batch {batch}")
    reference = batched_gradient(batch)
    assert all(np.array_equal(grads[k], reference[k]) for k in reference)
    _assert_matches_loop(grads["w1"], batch, LOOP_ROWS[batch][benchmark.disabled])


def _book_loop_one_blas_thread(f, x, h):
    """The book's loop with one BLAS thread, as the engine runs its loop: with two, OpenBLAS
    splits a batch of 10's product differently and the last bits of the losses change."""
    with threadpool_limits(limits=1):
        return book_numerical_gradient(f, x, h)


def _assert_matches_loop(w1_grad, batch, rows):
    """Batched agrees with the loop on its window: zeros exactly, the rest to 1e-9 of max |g|.

    Over a batch of 100 the w1 gradient is ~1e-4, and one ulp of the loss (~4e-16) over 2h
    is already ~1e-8 of it: the loop's own rounding. So the bound is the larger of 1e-9
    relative and a few ulps of the loss per difference (as in tests/test_batched.py).
    """
    problem = net_problem(batch, rows)
    loop = serial_window_gradient(batch, rows)
    window = w1_grad[problem.start:problem.start + rows]
    noise = 4 * np.spacing(problem.f(None)) / (2 * H)
    assert np.max(np.abs(window - loop)) <= max(noise, 1e-9 * np.max(np.abs(w1_grad)))
    assert np.all(window[loop == 0] == 0)
