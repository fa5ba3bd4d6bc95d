"""The serial reference: the teaching text's semantics, exactly."""
import numpy as np
import pytest

from engine import numerical_gradient

from book_reference import book_numerical_gradient


def quadratic_with_cross_terms(w):
    return float(np.sum(w ** 2) + np.prod(w.shape) * np.sum(np.sin(w)) + w.ravel()[0] * w.ravel()[-1])


@pytest.mark.parametrize("shape", [(), (1,), (5,), (3, 4), (2, 3, 2)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_equals_the_books_loop_exactly(shape, dtype):
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    expected = book_numerical_gradient(quadratic_with_cross_terms, x.copy())
    got = numerical_gradient(quadratic_with_cross_terms, x)
    assert got.shape == x.shape and got.dtype == x.dtype
    assert np.array_equal(got, expected)


def test_matches_the_analytic_gradient():
    x = np.array([[0.5, -1.5], [2.0, 3.0]])
    g = numerical_gradient(lambda w: float(np.sum(w ** 3)), x)
    np.testing.assert_allclose(g, 3 * x ** 2, rtol=1e-7)


def test_restores_every_entry_bit_for_bit():
    x = np.array([0.1, 1 / 3, 1e-300, -7.7e10, 5e-324])
    before = x.copy()
    numerical_gradient(lambda w: float(np.sum(w)), x)
    assert np.array_equal(x.view(np.uint64), before.view(np.uint64))


def test_f_is_called_with_the_object_passed_as_x():
    params = {"a": np.ones(2), "b": np.zeros((1, 2))}
    seen = []
    numerical_gradient(lambda p: seen.append(p) or 0.0, params)
    assert seen and all(p is params for p in seen)


def test_f_sees_the_perturbation_through_a_closure():
    params = {"w": np.array([1.0, 2.0])}
    f = lambda _: float(params["w"][0] * 10 + params["w"][1])  # noqa: E731  the book's pattern
    g = numerical_gradient(f, params["w"])
    np.testing.assert_allclose(g, [10.0, 1.0], rtol=1e-9)


@pytest.mark.parametrize("kind", [list, tuple])
def test_list_and_tuple_inputs_keep_their_structure(kind):
    x = kind([np.array([1.0, 2.0]), np.array(3.0)])
    g = numerical_gradient(lambda v: float(v[0] @ v[0] + v[1] ** 2), x)
    assert type(g) is kind
    np.testing.assert_allclose(g[0], [2.0, 4.0], rtol=1e-8)
    np.testing.assert_allclose(g[1], 6.0, rtol=1e-8)


def test_empty_array_gives_empty_gradient():
    g = numerical_gradient(lambda w: 0.0, np.zeros((0, 3)))
    assert g.shape == (0, 3)


class TestSchemes:
    def test_forward_is_first_order_and_uses_n_plus_one_calls(self):
        calls = []
        x = np.array([1.0, 2.0, 3.0])
        g = numerical_gradient(lambda w: calls.append(1) or float(np.sum(w ** 2)), x,
                               h=1e-6, scheme="forward")
        assert len(calls) == x.size + 1
        np.testing.assert_allclose(g, 2 * x, rtol=1e-5)

    def test_central4_is_exact_on_a_quartic_up_to_rounding(self):
        x = np.array([0.7, -1.2])
        g = numerical_gradient(lambda w: float(np.sum(w ** 4)), x, h=1e-2, scheme="central4")
        np.testing.assert_allclose(g, 4 * x ** 3, rtol=1e-10)

    def test_unknown_scheme_is_an_error(self):
        with pytest.raises(ValueError, match="`scheme`"):
            numerical_gradient(lambda w: 0.0, np.ones(2), scheme="backward")

    def test_dict_of_steps(self):
        params = {"a": np.array([1.0]), "b": np.array([2.0])}
        g = numerical_gradient(lambda p: float(p["a"][0] ** 2 + p["b"][0] ** 2), params,
                               h={"a": 1e-3, "b": 1e-5})
        np.testing.assert_allclose([g["a"][0], g["b"][0]], [2.0, 4.0], rtol=1e-8)

    def test_dict_of_steps_must_name_every_key(self):
        with pytest.raises(ValueError, match="missing"):
            numerical_gradient(lambda p: 0.0, {"a": np.ones(1), "b": np.ones(1)}, h={"a": 1e-3})
