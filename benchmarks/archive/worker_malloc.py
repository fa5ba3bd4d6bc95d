"""One-off (2026-11-28, the worker malloc thresholds): per-call time of the batched gradient on 2 workers, by the workers' malloc settings.

Three Gradients, each with its own pool started under one environment, called in turn
(interleaved rounds), plus the in-process call; prints medians and the workers' minor faults.
"""
import resource
import statistics
import sys
import time

import numpy as np

import engine
from engine.run import _backends
from engine.nn._model import mlp, init_params

BATCH = int(sys.argv[1]) if len(sys.argv) > 1 else 100
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 7
base = dict(_backends.SINGLE_THREAD_ENVIRONMENT)
SETTINGS = {
    "none": base,
    "32MiB/64MiB": {**base, "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(64 * 2**20)},
    "1e9/1e9": {**base, "MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "1000000000"},
}
train, _ = engine.load_embedded_mnist()
x, t = train.images[:BATCH], train.labels[:BATCH]
model = mlp([784, 100, 10])
params = init_params([784, 100, 10], 0.01, seed=0)
gradients = {}
for name, env in SETTINGS.items():
    _backends._WORKER_ENVIRONMENT = env
    g = engine.Gradient(model.loss, workers=2, dispatch="parallel")
    g(params, x, t)                       # starts its pool under `env`
    gradients[name] = g
serial = engine.Gradient(model.loss, workers=1)
times = {name: [] for name in [*SETTINGS, "in-process"]}
reference = serial(params, x, t)
for _ in range(ROUNDS):
    for name, g in [*gradients.items(), ("in-process", serial)]:
        start = time.perf_counter()
        got = g(params, x, t)
        times[name].append(time.perf_counter() - start)
        assert all(np.array_equal(got[k], reference[k]) for k in got)
one = statistics.median(times["in-process"])
for name, samples in times.items():
    m = statistics.median(samples)
    print(f"batch {BATCH}: {name:12s} median {m * 1e3:8.1f} ms  speed-up vs in-process {one / m:5.2f}x")
for g in gradients.values():
    g.close()
