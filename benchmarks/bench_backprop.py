"""Suite 4: the floor: backprop's gradient of the same net and batches (groups of suite 2),
with one BLAS thread like the batched evaluator it is compared with."""
import pytest
from threadpoolctl import threadpool_limits

from measuring import record, timed
from workloads import (BATCH_GROUPS as GROUPS, BATCHES, TOTAL_ENTRIES, batched_gradient,
                       net_problem, relative_error)


@pytest.mark.parametrize("batch", BATCHES)
def test_backprop(benchmark, batch):
    benchmark.group = GROUPS[batch]
    problem = net_problem(batch)
    # One BLAS thread, as the engine's evaluations: with numpy's default two, on a busy
    # 2-core machine, backprop of a batch of 100 took 1.6 to 6.6 ms from run to run.
    with threadpool_limits(limits=1):
        grads = timed(benchmark, problem.net.gradient, problem.x, problem.t, rounds=200,
                      warmup_rounds=5)
    record(benchmark, suite="4", case="backprop (the floor), one BLAS thread",
           backend="in-process", evaluator="backprop", entries=TOTAL_ENTRIES, batch=batch)
    numerical = batched_gradient(batch)
    for name, grad in grads.items():
        assert relative_error(numerical[name], grad) < 1e-6, name
