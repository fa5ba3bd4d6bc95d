"""parallel_numerical_gradient equals the serial reference exactly, for every worker count."""
import os
from pathlib import Path

import numpy as np
import pytest

from engine import MLP, Execution, gradient_check, numerical_gradient, parallel_numerical_gradient

WORKER_COUNTS = [1, 2, 3, 4, 8]


def small_net(rng, dtype=np.float64):
    """A 6-5-3 tanh net; `loss` reads the params dict, the book's closure pattern."""
    params = {
        "w1": rng.standard_normal((6, 5)).astype(dtype),
        "b1": rng.standard_normal(5).astype(dtype),
        "w2": rng.standard_normal((5, 3)).astype(dtype),
        "b2": np.zeros(3, dtype=dtype),
    }
    data = rng.random((4, 6))

    def loss(_):
        z = np.tanh(data @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[:, 0]))

    return params, loss


def snapshot(x):
    arrays = x.values() if isinstance(x, dict) else (x if isinstance(x, (list, tuple)) else [x])
    return [np.array(a, copy=True) for a in arrays]


def unchanged(x, before):
    arrays = x.values() if isinstance(x, dict) else (x if isinstance(x, (list, tuple)) else [x])
    return all(a.tobytes() == b.tobytes() for a, b in zip(arrays, before))


def assert_exactly_equal(got, expected):
    if isinstance(expected, dict):
        assert got.keys() == expected.keys()
        for key in expected:
            assert got[key].dtype == expected[key].dtype
            assert np.array_equal(got[key], expected[key]), key
    else:
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert np.array_equal(got, expected)


@pytest.mark.parametrize("workers", WORKER_COUNTS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dict_of_arrays_exact(rng, workers, dtype):
    params, loss = small_net(rng, dtype)
    before = snapshot(params)
    expected = numerical_gradient(loss, params)
    got = parallel_numerical_gradient(loss, params, workers=workers)
    assert_exactly_equal(got, expected)
    assert unchanged(params, before)


@pytest.mark.parametrize("workers", WORKER_COUNTS)
def test_single_array_through_a_closure_exact(rng, workers):
    params, loss = small_net(rng)
    expected = numerical_gradient(loss, params["w1"])
    got = parallel_numerical_gradient(loss, params["w1"], workers=workers)
    assert_exactly_equal(got, expected)


def sum_of_sines(w):
    return float(np.sum(np.sin(w) * np.arange(w.size).reshape(w.shape)))


LAYOUTS = {
    "fortran": lambda r: np.asfortranarray(r.standard_normal((4, 5))),
    "strided view": lambda r: r.standard_normal((6, 8))[::2, 1::3],
    "transposed view": lambda r: r.standard_normal((3, 7)).T,
    "zero-d": lambda r: np.array(r.standard_normal()),
    "smaller than workers": lambda r: r.standard_normal(2),
    "3-d": lambda r: r.standard_normal((2, 3, 4)),
}


@pytest.mark.parametrize("workers", WORKER_COUNTS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_memory_layouts_exact(rng, workers, layout):
    x = LAYOUTS[layout](rng)
    before = snapshot(x)
    expected = numerical_gradient(sum_of_sines, x)
    got = parallel_numerical_gradient(sum_of_sines, x, workers=workers)
    assert_exactly_equal(got, expected)
    assert unchanged(x, before)


@pytest.mark.parametrize("workers", [2, 3])
def test_view_whose_base_f_reads(rng, workers):
    """x is a view; f reads the base array it was cut from: the link must survive pickling."""
    base = rng.standard_normal((4, 6))
    view = base[1:3, ::2]
    f = lambda _: float(np.sum(np.cos(base)))  # noqa: E731
    expected = numerical_gradient(f, view)
    assert np.any(expected != 0)
    assert_exactly_equal(parallel_numerical_gradient(f, view, workers=workers), expected)


@pytest.mark.parametrize("kind", [list, tuple])
def test_list_and_tuple_exact(rng, kind):
    x = kind([rng.standard_normal((2, 3)), rng.standard_normal(4).astype(np.float32)])
    f = lambda v: float(np.sum(v[0] ** 3) + np.sum(np.exp(v[1])))  # noqa: E731
    expected = numerical_gradient(f, x)
    got = parallel_numerical_gradient(f, x, workers=3)
    assert type(got) is kind
    for g, e in zip(got, expected):
        assert_exactly_equal(g, e)


@pytest.mark.parametrize("chunk_size", [1, 2, 7, 1000])
def test_any_chunking_exact(rng, chunk_size):
    params, loss = small_net(rng)
    expected = numerical_gradient(loss, params)
    got = parallel_numerical_gradient(loss, params, workers=2, chunk_size=chunk_size)
    assert_exactly_equal(got, expected)


def test_restore_is_by_assignment_when_one_worker_takes_many_chunks():
    """Values where (x + h) - h != x: a restore by arithmetic would drift across chunks."""
    x = np.array([0.1, 1 / 3, 2 / 3, 1e-300, 5e-324, 123456.789, -0.7])
    assert any((v + 1e-4) - 1e-4 != v for v in x)
    f = lambda w: float(np.sum(w ** 2 + w))  # noqa: E731
    expected = numerical_gradient(f, x.copy())
    assert_exactly_equal(parallel_numerical_gradient(f, x, workers=2, chunk_size=1), expected)


@pytest.mark.parametrize("workers", [2, 4, 8])
def test_threads_perturb_their_own_copies(rng, workers):
    """With shared arrays, threads would see each other's perturbations."""
    big = {"w": rng.standard_normal((40, 40))}
    f = lambda _: float(np.sum(np.tanh(big["w"] @ big["w"])))  # noqa: E731  releases the GIL
    expected = numerical_gradient(f, big)
    got = parallel_numerical_gradient(f, big, workers=workers, backend="threading")
    assert_exactly_equal(got, expected)


def test_arrays_above_joblibs_memmapping_threshold_stay_writable_and_private():
    """2 MB of parameters: joblib would hand these to workers as read-only memmaps."""
    params = {"w": np.linspace(-1, 1, 260_000).reshape(520, 500)}
    f = lambda _: float(params["w"][::50, ::50].sum() + params["w"][0, 0] ** 2)  # noqa: E731
    grad = parallel_numerical_gradient(f, params, workers=2, chunk_size=65_000)
    expected = numerical_gradient(f, params)
    assert_exactly_equal(grad, expected)


def test_other_joblib_backends(rng):
    params, loss = small_net(rng)
    expected = numerical_gradient(loss, params)
    assert_exactly_equal(parallel_numerical_gradient(loss, params, workers=2,
                                                     backend="multiprocessing"), expected)


@pytest.mark.parametrize("scheme", ["central", "forward", "central4"])
@pytest.mark.parametrize("workers", [2, 3])
def test_every_scheme_exact(rng, scheme, workers):
    params, loss = small_net(rng)
    expected = numerical_gradient(loss, params, scheme=scheme)
    assert_exactly_equal(parallel_numerical_gradient(loss, params, workers=workers,
                                                     scheme=scheme), expected)


def blas_threads_now() -> int:
    from threadpoolctl import threadpool_info
    return max((lib["num_threads"] for lib in threadpool_info()), default=1)


def test_worker_processes_are_reused_and_run_one_blas_thread(tmp_path):
    def record_pid(w):
        mark = Path(tmp_path, str(os.getpid()))
        if not mark.exists():
            mark.write_text(str(blas_threads_now()))
        return float(np.sum(w ** 2))

    x = np.arange(16.0)
    parallel_numerical_gradient(record_pid, x, workers=2)
    first = {p.name for p in tmp_path.iterdir()} - {str(os.getpid())}
    parallel_numerical_gradient(record_pid, x, workers=2)
    second = {p.name for p in tmp_path.iterdir()} - {str(os.getpid())}
    assert first and second == first
    assert all(Path(tmp_path, pid).read_text() == "1" for pid in second)


class RecordsBlasThreads:
    """Writes one line per evaluation, "<thread id> <BLAS threads>", to a file: never copied."""

    def __init__(self, path):
        self.path = str(path)

    def __call__(self, w):
        import threading
        with open(self.path, "a") as file:
            file.write(f"{threading.get_ident()} {blas_threads_now()}\n")
        return float(np.sum(w ** 2))


@pytest.mark.parametrize("run, evaluations", [
    (lambda f, x: numerical_gradient(f, x), 12),
    # 12, and the first call's two evaluations of f(x) (its test for side effects)
    (lambda f, x: parallel_numerical_gradient(f, x, workers=1), 12 + 2),
    # 12 in the worker threads; the state check's f(x) and probe point, here and in a thread;
    # the first call's two here
    (lambda f, x: parallel_numerical_gradient(f, x, workers=3, backend="threading"), 16 + 2),
], ids=["serial", "in-process", "threads"])
def test_every_evaluation_runs_one_blas_thread_and_limits_come_back(tmp_path, run, evaluations):
    """Multi-threaded BLAS may round differently for other thread counts: one thread everywhere."""
    import threading

    from threadpoolctl import threadpool_limits

    f = RecordsBlasThreads(tmp_path / "records")
    with threadpool_limits(2):
        before = blas_threads_now()
        assert before == 2 or before == 1 and os.cpu_count() == 1
        run(f, np.arange(6.0))
        assert blas_threads_now() == before
    records = [line.split() for line in (tmp_path / "records").read_text().splitlines()]
    assert len(records) == evaluations
    assert {threads for _, threads in records} == {"1"}
    threads = {ident for ident, _ in records}
    if evaluations == 16 + 2:   # the worker threads really evaluated, and reported
        assert len(threads - {str(threading.get_ident())}) >= 1


class TestOneExecutionObject:
    """Where chunks run is one `Execution`, or its keywords, for every call that computes one."""

    def test_the_object_and_its_keywords_give_the_serial_bits(self, rng):
        params, loss = small_net(rng)
        expected = numerical_gradient(loss, params)
        by_object = parallel_numerical_gradient(loss, params, execution=Execution(workers=2, chunk_size=7))
        by_keywords = parallel_numerical_gradient(loss, params, workers=2, chunk_size=7)
        assert_exactly_equal(by_object, expected)
        assert_exactly_equal(by_keywords, expected)

    def test_keywords_replace_the_objects_fields(self, tmp_path):
        def record_pid(w):
            Path(tmp_path, str(os.getpid())).touch()
            return float(np.sum(w ** 2))

        parallel_numerical_gradient(record_pid, np.arange(8.0), execution=Execution(workers=2), workers=1)
        assert {p.name for p in tmp_path.iterdir()} == {str(os.getpid())}

    def test_auto_dispatch_of_a_one_shot_call_uses_the_workers(self, tmp_path):
        def record_pid(w):
            Path(tmp_path, str(os.getpid())).touch()
            return float(np.sum(w ** 2))

        parallel_numerical_gradient(record_pid, np.arange(8.0), execution=Execution(workers=2))
        assert {p.name for p in tmp_path.iterdir()} - {str(os.getpid())}

    def test_an_unknown_keyword_is_a_type_error_before_any_work(self):
        def never(w):
            raise AssertionError("f was called")

        with pytest.raises(TypeError, match="worker"):
            parallel_numerical_gradient(never, np.ones(3), worker=2)
        with pytest.raises(TypeError, match="engine.Execution"):
            parallel_numerical_gradient(never, np.ones(3), execution={"workers": 2})

    def test_a_nets_gradient_takes_it_too(self):
        net = MLP([5, 4, 3], seed=0)
        x, t = np.linspace(0.0, 1.0, 10).reshape(2, 5), np.array([0, 2])
        serial = net.numerical_gradient(x, t, workers=1, evaluator="loop")
        execution = Execution(workers=2, backend="threading")
        assert_exactly_equal(net.numerical_gradient(x, t, execution=execution, evaluator="loop"), serial)
        assert execution in [gradient.execution for gradient in net._gradients.values()]

    def test_the_gradient_check_runs_in_process_unless_given_one(self, tmp_path):
        class RecordsPids:   # the book's kind of net: loss and gradient, no engine model
            params = {"w": np.array([0.5, -1.0, 2.0])}

            def loss(self, x, t):
                Path(tmp_path, str(os.getpid())).touch()
                return float(np.sum((self.params["w"] * x - t) ** 2))

            def gradient(self, x, t):
                return {"w": 2 * (self.params["w"] * x - t) * x}

        net, x, t = RecordsPids(), np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0, 0.0])
        in_process = gradient_check(net, x, t)
        assert {p.name for p in tmp_path.iterdir()} == {str(os.getpid())}
        assert gradient_check(net, x, t, execution=Execution(workers=2)) == in_process
        assert {p.name for p in tmp_path.iterdir()} - {str(os.getpid())}


def test_worker_processes_start_with_the_malloc_thresholds_of_a_long_lived_process(tmp_path):
    # Without them a fresh worker maps its large temporaries anew on every call (benchmarks/README.md)
    def record_environment(w):
        names = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "OPENBLAS_NUM_THREADS")
        Path(tmp_path, str(os.getpid())).write_text(" ".join(os.environ.get(n, "-") for n in names))
        return float(np.sum(w ** 2))

    from engine import Gradient
    with Gradient(record_environment, workers=2, dispatch="parallel") as g:
        g(np.arange(8.0))
    seen = {p.read_text() for p in tmp_path.iterdir() if p.name != str(os.getpid())}
    assert seen == {f"{32 * 2**20} {64 * 2**20} 1"}
