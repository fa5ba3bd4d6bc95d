"""Device experiment: f's cost by BLAS threads, and loop scaling with 1 BLAS thread per worker."""
import time
from threadpoolctl import threadpool_limits
from engine import ThreeLayerNet, load_embedded_mnist
train, _ = load_embedded_mnist()
net = ThreeLayerNet(784, 100, 10, weight_init_std=0.01, seed=20261127)
x, t = train.images[:1].copy(), train.labels[:1].copy()
f = lambda w: net.loss(x, t)
for lim in (1, 2, 4, 8, 16):
    with threadpool_limits(lim):
        for _ in range(300): f(None)
        t0 = time.perf_counter()
        for _ in range(3000): f(None)
        print(f"f with {lim} BLAS threads: {1e6 * (time.perf_counter() - t0) / 3000:.1f} us", flush=True)
