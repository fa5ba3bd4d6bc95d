"""The flat index space: chunk ranges, segments, entry names, and the way back to `x`'s shape."""
import dataclasses

import numpy as np
import pytest

from engine.fd._space import ParamSpace, Segment, split_range


def mixed():
    """Sizes 6, 1 and 4: flat indices 0-5 are `a`, 6 is `b`, 7-10 are `c`."""
    return {
        "a": np.arange(6, dtype=np.float64).reshape(2, 3),
        "b": np.array(6.0),
        "c": np.arange(7, 11, dtype=np.float32),
    }


class TestSplitRange:
    def test_a_known_split(self):
        assert split_range(10, 3) == [(0, 3), (3, 6), (6, 10)]

    @pytest.mark.parametrize("size, n_chunks", [
        (1, 1), (7, 1), (7, 2), (10, 3), (10, 10), (3, 8), (100, 7), (5, 0),
    ])
    def test_pieces_tile_the_range_evenly(self, size, n_chunks):
        pieces = split_range(size, n_chunks)
        assert [lo for lo, _ in pieces] == [0] + [hi for _, hi in pieces[:-1]]
        assert pieces[-1][1] == size
        lengths = [hi - lo for lo, hi in pieces]
        assert min(lengths) >= 1 and max(lengths) - min(lengths) <= 1
        assert len(pieces) == max(1, min(n_chunks, size))
        assert all(type(b) is int for piece in pieces for b in piece)

    def test_nothing_to_split(self):
        assert split_range(0, 4) == []


class TestIndex:
    def test_sizes_and_offsets(self):
        space = ParamSpace(mixed())
        assert space.sizes == [6, 1, 4]
        assert space.offsets.tolist() == [0, 6, 7, 11]
        assert space.size == 11

    def test_segments_cut_a_range_per_array(self):
        space = ParamSpace(mixed())
        assert list(space.segments(4, 9)) == [
            Segment(position=0, start=4, stop=6, offset=4),
            Segment(position=1, start=0, stop=1, offset=6),
            Segment(position=2, start=0, stop=2, offset=7),
        ]

    def test_a_range_on_a_boundary_has_no_empty_segment(self):
        space = ParamSpace(mixed())
        assert list(space.segments(6, 7)) == [Segment(1, 0, 1, 6)]
        assert list(space.segments(0, 6)) == [Segment(0, 0, 6, 0)]

    def test_segments_are_values(self):
        with pytest.raises(dataclasses.FrozenInstanceError):
            Segment(0, 0, 1, 0).stop = 2

    def test_every_flat_index_locates_its_entry(self):
        x = mixed()
        space = ParamSpace(x)
        for k in range(space.size):
            position, index = space.locate(k)
            assert space.arrays[position][index] == k

    def test_multi_indices_are_c_order(self):
        space = ParamSpace(mixed())
        assert space.multi_indices(0, 0, 6) == list(np.ndindex(2, 3))
        assert space.multi_indices(0, 2, 5) == [(0, 2), (1, 0), (1, 1)]
        assert space.multi_indices(1, 0, 1) == [()]

    @pytest.mark.parametrize("position, start", [(0, 4), (1, 1), (2, 3)])
    def test_an_empty_range_has_no_indices(self, position, start):
        assert ParamSpace(mixed()).multi_indices(position, start, start) == []

    def test_describe_names_the_entry(self):
        space = ParamSpace(mixed())
        assert space.describe(0) == "x['a'][0, 0]"
        assert space.describe(5) == "x['a'][1, 2]"
        assert space.describe(6) == "x['b'][]"
        assert space.describe(10) == "x['c'][3]"
        assert ParamSpace([np.zeros(2), np.zeros(3)]).describe(3) == "x[1][1]"
        assert ParamSpace(np.zeros((2, 2))).describe(3) == "x[1, 1]"


class TestAssemble:
    def test_values_go_back_in_order_with_each_arrays_dtype(self):
        space = ParamSpace(mixed())
        grads = space.assemble(np.arange(11, dtype=np.float64) + 0.5)
        assert set(grads) == {"a", "b", "c"}
        for name, array in mixed().items():
            assert grads[name].shape == array.shape and grads[name].dtype == array.dtype
            assert np.array_equal(grads[name], array + 0.5)

    def test_values_are_cast_as_the_serial_reference_stores_them(self):
        space = ParamSpace(np.zeros(1, dtype=np.float32))
        value = 1 / 3
        assert np.array_equal(space.assemble(np.array([value])), np.array([value], np.float32))

    @pytest.mark.parametrize("kind", [list, tuple])
    def test_sequences_keep_their_kind(self, kind):
        x = kind([np.zeros(2), np.zeros((1, 2))])
        grads = ParamSpace(x).assemble(np.arange(4.0))
        assert type(grads) is kind
        assert np.array_equal(grads[0], [0.0, 1.0]) and np.array_equal(grads[1], [[2.0, 3.0]])

    def test_a_bare_array_gives_a_bare_array(self):
        grad = ParamSpace(np.zeros((2, 2))).assemble(np.arange(4.0))
        assert isinstance(grad, np.ndarray)
        assert np.array_equal(grad, [[0.0, 1.0], [2.0, 3.0]])

    def test_a_vector_fs_rows_go_to_out_shape_plus_each_members_shape(self):
        """Row k of `values` is entry k's derivative of every output: it lands at
        ``grad[name][(o,) + index]`` for output o."""
        x = {"a": np.zeros((2, 3)), "b": np.zeros(2, dtype=np.float32)}
        values = np.arange(8 * 3, dtype=np.float64).reshape(8, 3)   # 8 entries, 3 outputs
        grads = ParamSpace(x).assemble(values, out_shape=(3,))
        assert grads["a"].shape == (3, 2, 3) and grads["b"].shape == (3, 2)
        assert grads["b"].dtype == np.float32
        for o in range(3):
            assert np.array_equal(grads["a"][o], values[:6, o].reshape(2, 3))
            assert np.array_equal(grads["b"][o], values[6:, o])
        matrix = ParamSpace(np.zeros(2)).assemble(np.arange(8.0).reshape(2, 4), out_shape=(2, 2))
        assert np.array_equal(matrix, np.arange(8.0).reshape(2, 4).T.reshape(2, 2, 2))

    def test_restored_puts_back_what_the_block_wrote(self):
        x = mixed()
        before = {k: v.copy() for k, v in x.items()}
        space = ParamSpace(x)
        with pytest.raises(ZeroDivisionError):
            with space.restored():
                x["a"][...] = -1.0
                x["c"][0] = 99.0
                raise ZeroDivisionError
        assert all(np.array_equal(x[k], before[k]) for k in x)

    def test_zeros_like_matches_shapes_and_dtypes(self):
        zeros = ParamSpace(mixed()).zeros_like()
        assert [(z.shape, z.dtype) for z in zeros] == [((2, 3), np.float64), ((), np.float64),
                                                       ((4,), np.float32)]
        assert all(not z.any() and z.flags.c_contiguous for z in zeros)


class TestBadInput:
    def test_a_read_only_array_is_refused_with_its_label(self):
        x = mixed()
        x["c"].flags.writeable = False
        with pytest.raises(ValueError, match=r"`x\['c'\]` is read-only; the engine perturbs"):
            ParamSpace(x)

    def test_an_integer_member_is_refused(self):
        with pytest.raises(TypeError, match=r"`x\[1\]` must have a floating dtype, got int64"):
            ParamSpace([np.zeros(2), np.arange(3, dtype=np.int64)])

    def test_a_member_that_is_not_an_array(self):
        with pytest.raises(TypeError, match=r"`x\['w'\]` must be a NumPy array, got list"):
            ParamSpace({"w": [1.0]})

    @pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
    @pytest.mark.parametrize("kind", ["MaskedArray", "matrix"])
    def test_a_masked_array_or_matrix_is_refused_naming_its_kind(self, kind):
        member = (np.ma.masked_array(np.zeros(2), mask=[True, False]) if kind == "MaskedArray"
                  else np.asmatrix(np.zeros((1, 2))))
        with pytest.raises(TypeError, match=rf"`x\['w'\]` is a {kind}, whose entries do not "
                                            r"behave as a plain array's"):
            ParamSpace({"w": member})

    def test_a_complex_member_is_refused_naming_the_real_and_imaginary_parts(self):
        with pytest.raises(TypeError, match=r"`x\[0\]` has the complex dtype complex128, but "
                                            r"needs a real floating dtype.*\(x\.real, x\.imag\)"):
            ParamSpace([np.zeros(2, dtype=np.complex128)])

    def test_a_structure_of_another_kind(self):
        with pytest.raises(TypeError, match="`x` must be a floating-point ndarray.*got set"):
            ParamSpace({np.zeros(1).tobytes()})


class TestListsOfNumbers:
    """A list or tuple of numbers is the vector it spells; anything ambiguous is refused."""

    @pytest.mark.parametrize("x", [[1.0, 2.0], (1.0, 2.0), [1, 2.0], [np.float32(1), np.int64(2)]])
    def test_becomes_a_float64_vector(self, x):
        space = ParamSpace(x)
        assert isinstance(space.structure, np.ndarray) and space.structure.dtype == np.float64
        assert np.array_equal(space.structure, [1.0, 2.0]) and space.labels == ["x"]
        assert isinstance(space.rebuild(space.zeros_like()), np.ndarray)

    def test_the_callers_list_is_not_changed(self):
        import engine

        x = [1.0, 2.0]
        grad = engine.numerical_gradient(lambda v: float(np.sum(v ** 3)), x)
        assert x == [1.0, 2.0] and grad.shape == (2,)

    @pytest.mark.parametrize("workers", [1, 2])
    def test_every_call_gives_the_arrays_numbers_exactly(self, workers):
        import engine

        f = lambda v: float(np.sum(np.sin(v) * v))
        as_array = np.array([0.5, 1.5, -2.0])
        serial = engine.numerical_gradient(f, as_array.copy())
        assert np.array_equal(engine.numerical_gradient(f, [0.5, 1.5, -2.0]), serial)
        assert np.array_equal(engine.parallel_numerical_gradient(f, (0.5, 1.5, -2.0),
                                                                 workers=workers), serial)
        with engine.Gradient(f, workers=workers, dispatch="parallel" if workers > 1 else "auto") as g:
            assert np.array_equal(g([0.5, 1.5, -2.0]), serial)
        jac = engine.jacobian(lambda v: np.array([v[0] * v[1], v[2]]), [1.0, 2.0, 3.0],
                              workers=workers)
        assert np.array_equal(jac, engine.jacobian(lambda v: np.array([v[0] * v[1], v[2]]),
                                                   np.array([1.0, 2.0, 3.0]), workers=1))

    @pytest.mark.parametrize("x, message", [
        (1.0, r"`x` must be an array, got the number 1\.0: pass np\.array\(\[1\.0\]\)"),
        (np.float64(2), r"got the number 2\.0: pass np\.array\(\[2\.0\]\) \(one entry\) or "
                        r"np\.array\(2\.0\) \(0-d\)"),
        ([1.0, np.zeros(2)], r"`x\[0\]` is a number among arrays.*np\.asarray\(x, dtype=float\)"),
        ([np.zeros(2), 3], r"`x\[1\]` is a number among arrays"),
        ([True, 1.0], r"`x\[0\]` must be a NumPy array, got bool"),
    ])
    def test_ambiguous_input_is_refused_naming_the_fix(self, x, message):
        with pytest.raises(TypeError, match=message):
            ParamSpace(x)
