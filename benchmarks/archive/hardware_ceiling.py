"""How much faster two CPU-bound processes are than one, on this machine, without the engine.

The ceiling for any process-parallel speedup: each process runs the same fixed amount of
work (a pure-Python loop, and a numpy loop shaped like the seed net's first layer, one
BLAS thread), first alone, then two at once. The throughput ratio is
``2 * time_alone / time_of_slower_of_two``; 2.0 means two free cores.

    python benchmarks/hardware_ceiling.py --repeats 5
"""
from __future__ import annotations

import argparse
import statistics
import time
from multiprocessing import get_context


def python_loop(_=None) -> float:
    start = time.perf_counter()
    total = 0
    for i in range(3_000_000):
        total += i * i
    return time.perf_counter() - start


def numpy_loop(_=None) -> float:
    import numpy as np
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    x, w = rng.random(784), rng.random((784, 100))
    with threadpool_limits(1):
        start = time.perf_counter()
        for _ in range(20_000):
            (x @ w).sum()
        return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="measurements per kind of work")
    args = parser.parse_args(argv)
    with get_context("spawn").Pool(2) as pool:
        for work in (python_loop, numpy_loop):
            ratios = []
            for _ in range(args.repeats):
                alone = pool.map(work, [0])[0]
                together = pool.map(work, [0, 1])
                ratios.append(2 * alone / max(together))
            print(f"{work.__name__}: two processes give {statistics.median(ratios):.2f}x the "
                  f"throughput of one (median of {args.repeats}; all: "
                  f"{', '.join(f'{r:.2f}' for r in ratios)})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
