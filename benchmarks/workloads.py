"""What the benchmark suites time: the seed net on real digits, black boxes (an ODE fit, a heated
rod's thermometers), SciPy adapters.

Shared by the ``bench_*.py`` suites and the scripts, imported as ``workloads``: pytest (this
folder has no ``__init__.py``, so it imports from its ``rootdir``-relative folder) and Python
running ``python benchmarks/NAME.py`` (the script's folder comes first on the path) both
find it; how they measure is in `measuring`.
Everything a worker process must unpickle lives here at module level, so both loky workers
and a ``multiprocessing`` pool can import it by name.
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

import engine
from engine import ThreeLayerNet, load_embedded_mnist

SEED = 20261127
H = 1e-4                       # the book's step, for our engine and SciPy alike
SIZES = (784, 100, 10)         # the seed net
TOTAL_ENTRIES = 784 * 100 + 100 + 100 * 10 + 10   # 79,510 parameters
CENTRE_PIXEL = 14 * 28 + 14    # row 14, column 14 of the 28x28 image
POOL_SIZE = 2                  # plain process pool: SciPy's workers, the hand-rolled ceiling
BATCH_GROUPS = {1: "2 one image: batched vs loop vs backprop",     # suites 2 and 4, by batch
                10: "2 batch of 10: batched vs loop vs backprop",
                100: "2 batch of 100: batched vs loop vs backprop"}
BATCHES = sorted(BATCH_GROUPS)


def available_cores() -> int:
    """Cores this process may use (affinity respected where the OS reports it)."""
    count = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        count = min(count, len(os.sched_getaffinity(0)))
    return max(1, count)


def worker_counts(cores: int | None = None) -> list[int]:
    """Worker counts to sweep: every count up to 8, then powers of two and the core count."""
    cores = available_cores() if cores is None else cores
    counts = {w for w in range(1, min(cores, 8) + 1)}
    counts |= {2 ** k for k in range(4, 10) if 2 ** k <= cores}
    counts |= {w for w in (12,) if w <= cores}
    return sorted(counts | {cores})


# --- the seed net ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def mnist_train():
    """The embedded 4,000 training digits (loaded once per process)."""
    return load_embedded_mnist()[0]


def seed_net() -> ThreeLayerNet:
    """The book's 784-100-10 net, freshly initialised with a fixed seed."""
    return ThreeLayerNet(*SIZES, weight_init_std=0.01, seed=SEED)


@dataclass
class NetProblem:
    """One seed net, its data, and the book's closure ``f = lambda w: net.loss(x, t)``.

    `window` is a view of `rows` consecutive rows of ``net.params['w1']`` (one row per pixel)
    centred on the image's middle pixel, where the digit's strokes are, so its gradient is
    not all zeros. With the
    loop evaluator every entry costs the same two forward passes, so timing the window and
    multiplying by `scale` estimates the full 79,510-entry gradient.
    """

    net: ThreeLayerNet
    x: np.ndarray
    t: np.ndarray
    window: np.ndarray
    start: int
    f: Callable

    @property
    def entries(self) -> int:
        return self.window.size

    @property
    def scale(self) -> float:
        return TOTAL_ENTRIES / self.entries

    def backprop_window(self) -> np.ndarray:
        """The backprop gradient of the window's entries (the trusted reference)."""
        grad = self.net.gradient(self.x, self.t)["w1"]
        return grad[self.start:self.start + self.window.shape[0]]


def net_problem(batch: int = 1, rows: int = 1) -> NetProblem:
    """A fresh seed net with the first `batch` training digits and a `rows`-row window of w1."""
    data = mnist_train()
    net = seed_net()
    x, t = data.images[:batch].copy(), data.labels[:batch].copy()
    start = min(max(CENTRE_PIXEL - rows // 2, 0), SIZES[0] - rows)
    window = net.params["w1"][start:start + rows]
    return NetProblem(net, x, t, window, start, lambda w: net.loss(x, t))


@functools.lru_cache(maxsize=16)
def serial_window_gradient(batch: int, rows: int) -> np.ndarray:
    """The serial reference on the window of `net_problem(batch, rows)` (computed once)."""
    problem = net_problem(batch, rows)
    return engine.numerical_gradient(problem.f, problem.window, H)


@functools.lru_cache(maxsize=4)
def batched_gradient(batch: int) -> dict:
    """The full gradient by the batched evaluator in this process (computed once)."""
    problem = net_problem(batch)
    f = problem.net.loss_function(problem.x, problem.t)
    return engine.parallel_numerical_gradient(f, problem.net.params, workers=1, h=H,
                                              evaluator="batched")


def book_numerical_gradient(f: Callable, x: np.ndarray, h: float = H) -> np.ndarray:
    """The teaching text's loop in plain numpy, no checks: what the engine's reference costs
    against. Sets each entry to x_i + h and x_i - h, stores (f1 - f2) / 2h, restores x_i."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        kept = x[index]
        x[index] = float(kept) + h
        f1 = f(x)
        x[index] = float(kept) - h
        f2 = f(x)
        grad[index] = (f1 - f2) / (2 * h)
        x[index] = kept
    return grad


@functools.lru_cache(maxsize=4)
def _resident_problem(batch: int, rows: int) -> NetProblem:
    return net_problem(batch, rows)


def book_part(batch: int, rows: int, lo: int, hi: int) -> np.ndarray:
    """The book's loop over flat entries lo..hi-1 of the window, on this process's own net."""
    problem = _resident_problem(batch, rows)
    flat = problem.window.reshape(-1)   # a view: perturbing it perturbs the net
    return book_numerical_gradient(problem.f, flat[lo:hi])


def _build_and_wait(batch: int, rows: int) -> None:
    _resident_problem(batch, rows)
    time.sleep(0.3)   # stay busy, so that every process of the pool takes one of these


def prepare_processes(pool, batch: int, rows: int) -> None:
    """Build the problem in each of the pool's `POOL_SIZE` processes, before any timing."""
    pool.starmap(_build_and_wait, [(batch, rows)] * POOL_SIZE, chunksize=1)


def hand_rolled_parallel(pool, batch: int, rows: int, parts: int) -> np.ndarray:
    """The window's gradient split over `parts` processes of `pool`, no engine: the ceiling.

    Each process keeps its own net (built on first use) and runs the book's loop over a
    contiguous share of the entries; only indices go out and gradients come back.
    """
    size = rows * SIZES[1]
    bounds = np.linspace(0, size, parts + 1).astype(int)
    pieces = pool.starmap(book_part, [(batch, rows, lo, hi) for lo, hi in zip(bounds, bounds[1:])])
    return np.concatenate(pieces).reshape(rows, SIZES[1])


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (0 when both are all zeros)."""
    scale = float(np.max(np.abs(want)))
    diff = float(np.max(np.abs(np.asarray(got) - want)))
    return diff / scale if scale else diff


# --- a black box: fit the couplings of damped oscillators --------------------------------------

class OscillatorFit:
    """Mismatch between a simulated and an observed trajectory of n coupled damped oscillators.

    ``x_i'' = -k_i x_i - c x_i' + sum_j C_ij x_j``, integrated from a fixed start by classic RK4
    with a fixed step for `steps` steps; the loss is the mean squared distance of the simulated
    positions from those of a hidden "true" coupling. The parameters are the coupling matrix
    C, shape (n, n) (a flat vector of n*n entries is accepted too, for SciPy). The ODE is
    linear, so one RK4 step is the matrix ``I + M + M^2/2 + M^3/6 + M^4/24`` (M = dt*A),
    formed once per call and applied `steps` times: about 1 ms per call in numpy.
    """

    def __init__(self, n: int = 20, steps: int = 200, dt: float = 0.05, seed: int = SEED):
        rng = np.random.default_rng(seed)
        self.n, self.steps, self.dt = n, steps, dt
        self.stiffness = 1.0 + rng.random(n)
        self.damping = 0.05
        self.y0 = np.concatenate([rng.standard_normal(n), np.zeros(n)])
        truth = rng.normal(0.0, 0.3 / np.sqrt(n), (n, n))
        self.observed = self.simulate(truth)
        self.start = 0.5 * truth + rng.normal(0.0, 0.05 / np.sqrt(n), (n, n))

    @property
    def size(self) -> int:
        return self.n * self.n

    def simulate(self, coupling: np.ndarray) -> np.ndarray:
        """Positions at every step, shape (steps, n)."""
        n = self.n
        a = np.zeros((2 * n, 2 * n))
        a[:n, n:] = np.eye(n)
        a[n:, :n] = np.reshape(coupling, (n, n)) - np.diag(self.stiffness)
        a[n:, n:] = -self.damping * np.eye(n)
        m, eye = self.dt * a, np.eye(2 * n)
        step = eye + m @ (eye + m @ (eye + m @ (eye + m / 4) / 3) / 2)
        positions = np.empty((self.steps, n))
        y = self.y0
        for s in range(self.steps):
            y = step @ y
            positions[s] = y[:n]
        return positions

    def __call__(self, coupling: np.ndarray) -> float:
        return float(np.mean((self.simulate(coupling) - self.observed) ** 2))


# --- SciPy's view of the seed net: f of one flat vector --------------------------------------

class FlatNetLoss:
    """The seed net's loss as SciPy needs it: ``f(theta)`` of one flat vector.

    `theta` holds every parameter, arrays in sorted name order (b1, b2, w1, w2), so its first
    100 entries are b1. Each call copies `theta` into the net (one 0.64 MB copy) and
    returns the loss. Picklable by the standard `pickle`, as `multiprocessing` requires.
    """

    def __init__(self, net: ThreeLayerNet, x: np.ndarray, t: np.ndarray):
        self.net, self.x, self.t = net, x, t
        self.keys = sorted(net.params)

    def flatten(self) -> np.ndarray:
        return np.concatenate([self.net.params[k].ravel() for k in self.keys])

    def __call__(self, theta: np.ndarray) -> float:
        offset = 0
        for key in self.keys:
            array = self.net.params[key]
            array[...] = theta[offset:offset + array.size].reshape(array.shape)
            offset += array.size
        return self.net.loss(self.x, self.t)


class WindowLoss:
    """The seed net's loss as a function of a window of w1 rows only, flattened (for SciPy).

    Writes through ``net.params['w1']`` itself: `pickle` would turn a stored view of it
    into an unrelated copy in the worker.
    """

    def __init__(self, problem: NetProblem):
        self.net, self.x, self.t = problem.net, problem.x, problem.t
        self.rows = slice(problem.start, problem.start + problem.window.shape[0])

    def __call__(self, flat: np.ndarray) -> float:
        w1 = self.net.params["w1"]
        w1[self.rows] = flat.reshape(w1[self.rows].shape)
        return self.net.loss(self.x, self.t)


def limit_blas_threads() -> None:
    """Pool initializer: one BLAS thread per worker process, as our engine does for its workers."""
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=1)


def scipy_gradient(fun: Callable, x0: np.ndarray, workers=None) -> np.ndarray:
    """SciPy's parallel finite differences, as a user would call them (3-point, h = 1e-4)."""
    from scipy.optimize._numdiff import approx_derivative
    return approx_derivative(fun, x0, method="3-point", abs_step=H, workers=workers)


def scipy_leading_entries(fun: Callable, x0: np.ndarray, entries: int, workers) -> np.ndarray:
    """What `scipy_gradient` does for the first `entries` entries of a long `x0`, and no more.

    `approx_derivative` has no way to ask for a subset, and for the whole seed net it cannot
    run at all (Pool.map first lists all 2 x 79,510 perturbed copies of a 0.64 MB vector:
    about 101 GB). So this calls the routine it dispatches to, `_dense_difference`, with the
    same arguments `approx_derivative` builds (the wrapped `fun`, f0, h = 1e-4 everywhere,
    two-sided) except that the list of sides has `entries` items: SciPy's own loop then
    perturbs, copies and ships the full vector for exactly the first `entries` entries.
    """
    from scipy.optimize import _numdiff
    wrapped = _numdiff._Fun_Wrapper(fun, x0, (), {})
    f0 = wrapped(x0)
    h = np.full(x0.shape, H)
    jacobian, _ = _numdiff._dense_difference(wrapped, x0, f0, h, np.zeros(entries, dtype=bool),
                                             "3-point", workers)
    return np.asarray(jacobian)[:entries]


# --- a black box with many outputs: the thermometers of a heated rod ---------------------------

class HeatRod:
    """What `sensors` thermometers on a rod read, as a function of the conductivity of its zones.

    The rod has `zones` zones of `cells_per_zone` cells; zone i conducts heat with
    ``k_i = 0.1 + 0.9 * sigmoid(p_i)``, in (0.1, 1) for any parameter p_i. From a fixed,
    uneven start it cools through both ends (held at 0): the 1-D heat equation, explicit
    finite-volume steps (cell width 1, dt = 0.4, faces conduct with the harmonic mean of
    their cells, stable for any p as dt * k < 0.5). ``rod(p)`` returns the `sensors` readings
    at `samples` evenly spaced times, flat, shape ``(samples * sensors,)``: one numpy step
    costs about 3 us, so 300 steps take about 1 ms per call. Deterministic.

    ``rod.residuals(p)`` is ``rod(p) - rod.observed``, for a least-squares fit: `observed`
    are the readings of a hidden `truth` (one N(0, 1) parameter per zone) plus fixed noise
    of standard deviation `noise`; the fit starts from `start`, all zeros.
    """

    def __init__(self, zones: int = 200, cells_per_zone: int = 1, sensors: int = 20,
                 samples: int = 1, steps: int = 300, dt: float = 0.4, noise: float = 1e-3,
                 seed: int = SEED):
        cells = zones * cells_per_zone
        if not 1 <= samples <= steps or not 1 <= sensors <= cells:
            raise ValueError(f"`samples` must be 1..steps ({steps}) and `sensors` 1..cells "
                             f"({cells}), got samples={samples}, sensors={sensors}")
        rng = np.random.default_rng(seed)
        self.zones, self.cells_per_zone, self.sensors = zones, cells_per_zone, sensors
        self.samples, self.steps, self.dt = samples, steps, dt
        centres = (np.arange(cells) + 0.5) / cells
        self.u0 = 1.0 + np.sin(6 * np.pi * centres) + 0.3 * rng.standard_normal(cells)
        self.where = (np.arange(sensors) * cells) // sensors + cells // (2 * sensors)
        self.truth = rng.standard_normal(zones)
        self.observed = self(self.truth) + noise * rng.standard_normal(samples * sensors)
        self.start = np.zeros(zones)

    @property
    def size(self) -> int:
        return self.zones

    def conductivity(self, p: np.ndarray) -> np.ndarray:
        """Conductivity of every cell, shape (cells,)."""
        k = 0.1 + 0.9 / (1.0 + np.exp(-np.asarray(p, dtype=np.float64)))
        return np.repeat(k, self.cells_per_zone)

    def __call__(self, p: np.ndarray) -> np.ndarray:
        k = self.conductivity(p)
        faces = np.concatenate([k[:1], 2 * k[1:] * k[:-1] / (k[1:] + k[:-1]), k[-1:]])
        faces *= self.dt
        u = np.concatenate([[0.0], self.u0, [0.0]])   # the ends, held at 0
        inner, flux = u[1:-1], np.empty(k.size + 1)
        readings = np.empty((self.samples, self.sensors))
        every = self.steps // self.samples
        for step in range(1, every * self.samples + 1):
            np.subtract(u[1:], u[:-1], out=flux)
            flux *= faces
            inner += flux[1:]
            inner -= flux[:-1]
            if step % every == 0:
                readings[step // every - 1] = inner[self.where]
        return readings.reshape(-1)

    def residuals(self, p: np.ndarray) -> np.ndarray:
        return self(p) - self.observed
