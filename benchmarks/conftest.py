"""Fixtures for the benchmark suites, and the machine description saved with their results."""
from __future__ import annotations

import multiprocessing

import pytest

from measuring import describe_machine
from workloads import POOL_SIZE, limit_blas_threads


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["numgrad"] = describe_machine()


@pytest.fixture(scope="session")
def process_pool():
    """A plain process pool of 2, one BLAS thread per process: SciPy's ``workers=pool.map``,
    and the hand-rolled ceiling of suite 1.

    Spawned (not forked) so it does not inherit loky's threads; started once, so its start-up
    is never timed, exactly like our engine's reusable workers.
    """
    context = multiprocessing.get_context("spawn")
    with context.Pool(POOL_SIZE, initializer=limit_blas_threads) as pool:
        pool.map(abs, range(POOL_SIZE * 4))   # start the workers now
        yield pool
