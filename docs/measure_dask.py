"""Measure the dask backend against loky, side by side in one run (quoted in docs/cluster.md).

Run from the repository root:  python docs/measure_dask.py
Both backends get 2 workers of 1 thread: loky's reusable processes, and a local Dask
cluster (`LocalCluster(n_workers=2, threads_per_worker=1)`), reached through an active
`Client` that every call reuses, or by address (a new `Client` per call). Each figure is
the median of the timed calls, after one untimed warm-up call per backend; backends
alternate within each repeat. The last figure starts a `LocalCluster` in every call.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed gradients of the net")
    parser.add_argument("--overhead-repeats", type=int, default=15, help="timed trivial calls")
    parser.add_argument("--hidden", type=int, default=100, help="hidden layer of the 784-H-10 net")
    args = parser.parse_args()

    import distributed
    from joblib import cpu_count

    print(f"cores: {cpu_count()}, load average at start: {os.getloadavg()[0]:.2f}; "
          "medians in seconds")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster, set_as_default=False) as client:
            measure_overhead(args.overhead_repeats, client)
            measure_net(args.repeats, args.hidden, client)
    measure_fresh_local_cluster(3)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


def measure_overhead(repeats: int, client) -> None:
    """A trivial f over 400 entries: what a call costs beyond the work."""
    from engine import parallel_numerical_gradient

    w = np.random.default_rng(0).standard_normal(400)
    f = lambda v: float(w.sum())  # noqa: E731  trivial: the cost is all in the engine

    def call(**options):
        return lambda: parallel_numerical_gradient(f, w, workers=2, **options)

    times = compare(repeats, {
        "loky": call(backend="loky"),
        "dask, active Client": active(client, call(backend="dask")),
        "dask, scheduler=address": call(backend="dask", scheduler=client.scheduler.address),
    })
    report(f"per-call overhead, trivial f, {w.size} entries, workers=2 ({repeats} calls)", times)


def measure_net(repeats: int, hidden: int, client) -> None:
    """The full loop-evaluator gradient of ThreeLayerNet(784, hidden, 10) on one real image."""
    from engine import ThreeLayerNet, load_embedded_mnist, numerical_gradient, parallel_numerical_gradient

    train, _ = load_embedded_mnist()
    net = ThreeLayerNet(input_size=784, hidden_size=hidden, seed=0)
    image, label = train.images[:1], train.labels[:1]
    f = lambda w: net.loss(image, label)  # noqa: E731  the book's closure pattern
    grads = {}

    def run(backend):
        grads[backend] = parallel_numerical_gradient(f, net.params, workers=2, backend=backend,
                                                     evaluator="loop")

    times = compare(repeats, {"loky": lambda: run("loky"),
                              "dask, active Client": active(client, lambda: run("dask"))})
    entries = sum(p.size for p in net.params.values())
    report(f"gradient of 784-{hidden}-10, loop evaluator, {entries} entries, workers=2 "
           f"({repeats} calls)", times)
    start = time.perf_counter()
    serial = numerical_gradient(f, net.params)
    print(f"  {'serial reference (1 call)':<40}{time.perf_counter() - start:9.3f}")
    exact = all(np.array_equal(grads["loky"][k], serial[k])
                and np.array_equal(grads["dask"][k], serial[k]) for k in serial)
    print(f"  dask == loky == serial, bit for bit: {exact}")


def active(client, call):
    """`call`, run with `client` as the active (default) client."""
    def run():
        with client.as_current():
            return call()
    return run


def measure_fresh_local_cluster(repeats: int) -> None:
    """No Client anywhere: each call starts and closes its own LocalCluster."""
    from engine import parallel_numerical_gradient

    w = np.random.default_rng(0).standard_normal(400)
    f = lambda v: float(w.sum())  # noqa: E731
    times = compare(repeats, {"dask, no Client (LocalCluster per call)":
                              lambda: parallel_numerical_gradient(f, w, workers=2, backend="dask")},
                    warm_up=False)
    report("per-call cost without a Client, trivial f, 400 entries, workers=2", times)


def compare(repeats: int, calls: dict, warm_up: bool = True) -> dict[str, list[float]]:
    if warm_up:
        for call in calls.values():
            call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def report(title: str, times: dict[str, list[float]]) -> None:
    print(title)
    for name, values in times.items():
        print(f"  {name:<40}{statistics.median(values):9.3f}   (min {min(values):.3f}, "
              f"max {max(values):.3f})")


if __name__ == "__main__":
    main()
