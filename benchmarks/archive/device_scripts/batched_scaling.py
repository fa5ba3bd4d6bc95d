import time
import numpy as np
from engine import ThreeLayerNet, load_embedded_mnist
train, _ = load_embedded_mnist()
net = ThreeLayerNet(seed=0)
print("| batch | workers | median ms (5 calls) | vs 1 worker |\n|---:|---:|---:|---:|", flush=True)
for B in (1, 100):
    x, t = train.images[:B], train.labels[:B]
    ref = net.numerical_gradient(x, t, workers=1)
    base = None
    for w in (1, 2, 4, 8, 16):
        net.numerical_gradient(x, t, workers=w)
        ts = []
        for _ in range(5):
            t0 = time.perf_counter(); g = net.numerical_gradient(x, t, workers=w); ts.append(time.perf_counter() - t0)
        assert all(np.array_equal(g[k], ref[k]) for k in ref)
        m = 1000 * float(np.median(ts)); base = base or m
        print(f"| {B} | {w} | {m:.1f} | {base / m:.2f}x |", flush=True)
