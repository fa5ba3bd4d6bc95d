"""Property-based: any shape, dtype, memory order, view, worker count and chunking -> exact."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import numerical_gradient, parallel_numerical_gradient


@st.composite
def parameter_arrays(draw):
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=3)))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    seed = draw(st.integers(0, 2**32 - 1))
    base = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    layout = draw(st.sampled_from(["C", "F", "reversed", "strided"]))
    if layout == "F":
        return np.asfortranarray(base)
    if layout == "reversed" and base.ndim:
        return base[::-1]
    if layout == "strided":
        wide = np.repeat(base[..., None], 2, axis=-1) if base.ndim else base
        return wide[..., 0] if base.ndim else wide
    return base


def weighted_loss(x):
    arrays = x.values() if isinstance(x, dict) else [x]
    total = 0.0
    for k, a in enumerate(arrays, 1):
        flat = np.asarray(a, dtype=np.float64).reshape(-1)
        total += float(np.sum(np.sin(flat * k) * np.arange(1, flat.size + 1)))
    return total


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays=st.lists(parameter_arrays(), min_size=1, max_size=3),
       workers=st.sampled_from([2, 3]),
       backend=st.sampled_from(["loky", "threading"]),
       chunk_size=st.one_of(st.none(), st.integers(1, 9)),
       as_dict=st.booleans())
def test_parallel_equals_serial_and_leaves_x_untouched(arrays, workers, backend, chunk_size, as_dict):
    x = {f"p{i}": a for i, a in enumerate(arrays)} if as_dict else arrays[0]
    members = list(x.values()) if as_dict else [x]
    before = [m.tobytes() for m in members]
    expected = numerical_gradient(weighted_loss, x)
    got = parallel_numerical_gradient(weighted_loss, x, workers=workers, backend=backend,
                                      chunk_size=chunk_size)
    pairs = zip(got.values(), expected.values()) if as_dict else [(got, expected)]
    for g, e in pairs:
        assert g.dtype == e.dtype and g.shape == e.shape
        assert np.array_equal(g, e)
    assert [m.tobytes() for m in members] == before
