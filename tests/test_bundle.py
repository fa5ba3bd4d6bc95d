"""The bundle shipped to workers, pickled and unpickled in this process (no workers)."""
import threading

import numpy as np
import pytest

from engine._errors import PayloadError
from engine.run._bundle import dumps_bundle, loads_bundle


def round_trip(f, x, views, args=()):
    return loads_bundle(dumps_bundle(f, x, views, args))


def test_f_x_and_args_come_back_equal_and_f_still_works():
    x = {"w": np.linspace(0.0, 1.0, 6).reshape(2, 3), "b": np.array([0.5, -1.5])}
    scale = 3.0
    f = lambda p, k: scale * float(np.sum(p["w"])) + k  # noqa: E731  a closure
    f2, x2, args2 = round_trip(f, x, list(x.values()), args=[7.0])
    assert args2 == (7.0,)
    assert np.array_equal(x2["w"], x["w"]) and np.array_equal(x2["b"], x["b"])
    assert x2["w"] is not x["w"] and x2["w"].flags.writeable
    assert f2(x2, 7.0) == f(x, 7.0)


@pytest.mark.parametrize("order", ["C", "F"])
def test_views_of_a_members_base_share_one_copy_of_it(order):
    base = np.asarray(np.arange(20.0).reshape(4, 5), order=order)
    member = base[1:3, ::2]                 # a strided view: the parameter array
    other = base[:, 4]                      # another view that `f` reads
    f = lambda v: float(base.sum() + other.sum())  # noqa: E731
    f2, member2, (other2,) = round_trip(f, member, [member], args=(other,))
    assert np.array_equal(member2, member) and np.array_equal(other2, other)
    member2[0, 1] = -100.0                  # base[1, 2] in the worker's copy
    assert other2.base is member2.base
    assert f2(None) == f(None) - base[1, 2] - 100.0
    member2[1, 2] = 1000.0                  # base[2, 4]: also an entry of `other`
    assert other2[2] == 1000.0


def test_arrays_that_share_nothing_with_x_travel_as_copies_of_their_own_entries():
    data = np.zeros(1_000_000)              # a data set; `f` holds a small slice of it
    batch = data[:10]
    x = np.ones(3)
    f = lambda v: float(np.sum(v) + np.sum(batch))  # noqa: E731
    payload = dumps_bundle(f, x, [x])
    assert len(payload) < 50_000            # the 8 MB base did not travel
    f2, x2, _ = loads_bundle(payload)
    assert f2(x2) == 3.0


def test_a_base_of_objects_is_never_rebuilt_from_its_memory():
    base = np.empty(4, dtype=object)
    base[:] = [1.0, 2.0, 3.0, 4.0]
    view = base[1:3]
    _, view2, _ = round_trip(None, view, [view])
    assert view2.dtype == object and list(view2) == [2.0, 3.0]


def test_something_unpicklable_is_a_payload_error_that_says_what_to_do():
    lock = threading.Lock()
    f = lambda v: lock.locked()  # noqa: E731
    with pytest.raises(PayloadError, match=r"`f` cannot be pickled .*\(TypeError: .*lock") as caught:
        dumps_bundle(f, np.ones(2), [np.ones(2)])
    assert isinstance(caught.value, TypeError) and isinstance(caught.value.__cause__, TypeError)
    assert "Define `f` at module level" in str(caught.value)
