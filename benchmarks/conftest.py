"""Fixtures for the benchmark suites, and the machine description saved with their results."""
from __future__ import annotations

import multiprocessing
import platform
import subprocess
from pathlib import Path

import pytest

from workloads import POOL_SIZE, available_cores, limit_blas_threads


def cpu_model() -> str:
    """The CPU model as lscpu names it (falling back to /proc/cpuinfo, then platform)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def library_versions() -> dict:
    """numpy, SciPy and joblib versions, and the BLAS numpy calls (via threadpoolctl)."""
    import joblib
    import numpy
    import scipy
    from threadpoolctl import threadpool_info

    blas = [f"{p.get('internal_api')} {p.get('version')} ({p.get('num_threads')} threads, "
            f"{p.get('architecture')})" for p in threadpool_info() if p.get("user_api") == "blas"]
    return {"numpy": numpy.__version__, "scipy": scipy.__version__,
            "joblib": joblib.__version__, "blas": blas}


def engine_fingerprint() -> str:
    """A short hash of the engine's sources: which code a result was measured on."""
    import hashlib

    import engine
    digest = hashlib.sha256()
    for path in sorted(Path(engine.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["numgrad"] = {"cpu_model": cpu_model(), "cores": available_cores(),
                               "engine_sources": engine_fingerprint(), **library_versions()}


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
