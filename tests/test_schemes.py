"""Difference schemes and step sizes: each formula's exactness, its stated order, and bad steps.

The polynomials below have integer coefficients and the steps are powers of two, so every
value and every difference is exact in float64: where a scheme is exact in theory, its
result must equal the derivative bit for bit.
"""
import dataclasses

import numpy as np
import pytest

from engine.fd._schemes import (COMPLEX, DEFAULT_STEP, SCHEMES, Scheme, auto_step, check_step, fit_to_bounds,
                               get_scheme, one_sided, resolve_steps)

X, H = 3.0, 0.5


def difference(scheme, f, x=X, h=H, center=None):
    """The scheme's derivative of `f` at `x`, as the evaluators compute it."""
    values = [f(x + m * h) for m in scheme.multiples]
    if center is None and scheme.uses_center:
        center = f(x)
    return scheme.combine(values, center, h)


def power(d):
    return (lambda x: x ** d), (lambda x: d * x ** (d - 1))


@pytest.mark.parametrize("name", sorted(SCHEMES))
class TestFormulas:
    def test_exact_up_to_its_order(self, name):
        scheme = SCHEMES[name]
        for d in range(scheme.order + 1):
            f, df = power(d)
            assert difference(scheme, f) == df(X), f"{name} on x**{d}"

    def test_not_exact_one_degree_higher(self, name):
        # The order is the degree where exactness ends: the error term is h**order * f^(order+1).
        scheme = SCHEMES[name]
        f, df = power(scheme.order + 1)
        assert difference(scheme, f) != df(X)

    def test_error_shrinks_as_h_to_the_order(self, name):
        scheme = SCHEMES[name]
        f, df = power(scheme.order + 1)
        errors = [abs(difference(scheme, f, h=h) - df(X)) for h in (H, H / 2)]
        assert errors[0] / errors[1] == 2.0 ** scheme.order

    def test_uses_center_says_whether_f_of_x_is_read(self, name):
        scheme = SCHEMES[name]
        result = difference(scheme, lambda x: x * x, center=np.nan)
        assert bool(np.isnan(result)) is scheme.uses_center

    def test_one_evaluation_per_multiple(self, name):
        scheme = SCHEMES[name]
        assert len(scheme.multiples) == {"central": 2, "forward": 1, "central4": 4}[name]
        assert len(set(scheme.multiples)) == len(scheme.multiples) and 0 not in scheme.multiples

    def test_registered_under_its_name(self, name):
        assert SCHEMES[name].name == name
        assert get_scheme(name) is SCHEMES[name]


def test_known_values():
    assert SCHEMES["central"].combine([7.0, 3.0], None, 0.25) == 8.0          # 4 / 0.5
    assert SCHEMES["forward"].combine([7.0], 3.0, 0.25) == 16.0               # 4 / 0.25
    assert SCHEMES["central4"].combine([1.0, 2.0, 4.0, 8.0], None, 0.25) == -3.0   # -9 / 3


@pytest.mark.parametrize("name, root", [("forward", 2), ("central", 3), ("central4", 5)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_auto_step_is_the_documented_root_of_the_dtypes_eps(name, root, dtype):
    assert auto_step(get_scheme(name), dtype) == float(np.finfo(dtype).eps) ** (1.0 / root)


def test_auto_steps_in_figures():
    assert auto_step(get_scheme("forward"), np.float64) == 2.0 ** -26   # sqrt(2 ** -52)
    assert auto_step(get_scheme("central"), np.float64) == pytest.approx(6.0554544523933e-06,
                                                                         rel=1e-12)
    assert auto_step(get_scheme("central4"), np.float32) == pytest.approx(0.041234622211652,
                                                                          rel=1e-7)
    assert auto_step(get_scheme("complex"), np.float64) == 1e-20   # whatever the dtype
    assert auto_step(get_scheme("complex"), np.float16) == 1e-20


def test_schemes_cannot_be_changed_in_place():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SCHEMES["central"].multiples = (1,)


class TestGetScheme:
    def test_a_scheme_object_passes_through(self):
        custom = Scheme("backward", (-1,), True, lambda v, c, h: (c - v[0]) / h,
                        lambda v, c, s: (v[0] - c) / s[0], order=1, auto_root=2)
        assert get_scheme(custom) is custom

    @pytest.mark.parametrize("bad", ["backward", "Central", None, ["central"]])
    def test_unknown_names_are_refused_with_the_choices(self, bad):
        with pytest.raises(ValueError, match=r"`scheme` must be one of \['central', "
                                             r"'central4', 'forward', 'complex'\], got "):
            get_scheme(bad)


class TestResolveSteps:
    def test_one_number_for_every_array(self):
        steps = resolve_steps(1e-4, ["a", "b", "c"], ["x['a']", "x['b']", "x['c']"])
        assert steps == [1e-4, 1e-4, 1e-4]
        assert resolve_steps(0.5, [None], ["x"]) == [0.5]

    def test_a_dict_gives_each_key_its_step_in_the_order_of_x(self):
        steps = resolve_steps({"b": 1e-5, "a": 1e-3}, ["a", "b"], ["x['a']", "x['b']"])
        assert steps == [1e-3, 1e-5]

    @pytest.mark.parametrize("h", [1, np.float32(0.5), np.float64(1e-4), np.int64(2)])
    def test_numpy_and_integer_steps_become_floats(self, h):
        (step,) = resolve_steps(h, [None], ["x"])
        assert type(step) is float and step == float(h)

    @pytest.mark.parametrize("h", [0, 0.0, -1e-4, float("nan"), float("inf"), -float("inf")])
    def test_a_step_must_be_positive_and_finite(self, h):
        with pytest.raises(ValueError, match="`h` must be a positive finite number, got"):
            resolve_steps(h, [None], ["x"])

    @pytest.mark.parametrize("h", ["1e-4", None, True, np.bool_(True), [1e-4]])
    def test_a_step_must_be_a_number(self, h):
        with pytest.raises(TypeError, match="`h` must be a positive finite number, got"):
            resolve_steps(h, [None], ["x"])

    def test_a_bad_step_in_a_dict_is_named_by_its_key(self):
        with pytest.raises(ValueError, match=r"`h\['b'\]` must be a positive"):
            resolve_steps({"a": 1e-3, "b": 0.0}, ["a", "b"], ["x['a']", "x['b']"])

    @pytest.mark.parametrize("h, missing, unknown", [
        ({"a": 1e-3}, "['b']", "[]"),
        ({"a": 1e-3, "b": 1e-3, "z": 1e-3}, "[]", "[\"'z'\"]"),
        ({"a": 1e-3, "z": 1e-3}, "['b']", "[\"'z'\"]"),
    ])
    def test_a_dict_must_name_exactly_the_keys(self, h, missing, unknown):
        with pytest.raises(ValueError) as error:
            resolve_steps(h, ["a", "b"], ["x['a']", "x['b']"])
        assert str(error.value) == ("`h` as a dict must name exactly the keys of `x`: "
                                    f"missing {missing}, unknown {unknown}")


class TestOneSidedAndBounds:
    @pytest.mark.parametrize("order", [1, 2, 4])
    @pytest.mark.parametrize("side", [1, -1])
    def test_one_sided_is_exact_up_to_its_order_and_not_beyond(self, order, side):
        scheme, x, h = one_sided(order, side), 0.3, 0.125
        for degree in range(order + 2):
            poly = lambda t, d=degree: t ** d  # noqa: E731
            values = [poly(x + m * h) for m in scheme.multiples]
            got = scheme.combine(values, poly(x), h)
            stored = scheme.combine_stored(values, poly(x), [m * h for m in scheme.multiples])
            exact = degree * x ** (degree - 1) if degree else 0.0
            if degree <= order:
                assert abs(got - exact) < 1e-12 and abs(stored - exact) < 1e-12
            else:
                assert abs(got - exact) > 1e-4 and abs(stored - exact) > 1e-4

    def test_second_order_is_the_textbook_formula_bit_for_bit(self):
        v0, v1, v2, h = 1.0, 1.3, 1.7, 0.1
        assert one_sided(2, 1).combine([v1, v2], v0, h) == (-3 * v0 + 4 * v1 - v2) / (2 * h)
        assert one_sided(2, -1).combine([v1, v2], v0, h) == (-3 * v0 + 4 * v1 - v2) / (2 * -h)

    @pytest.mark.parametrize("x, lower, upper, name, step", [
        (0.5, 0.0, 1.0, "central", 0.25),        # fits
        (0.5, 0.4, 1.0, "one-sided2+", 0.25),    # one side has room for 2h
        (0.5, 0.0, 0.6, "one-sided2-", 0.25),
        (0.5, 0.47, 0.6, "one-sided2+", 0.05),   # shrunk: room/2 above beats room below
        (0.5, 0.4, 0.6, "central", 0.1),         # shrunk: a tie goes to centred
        (0.5, 0.5, 0.5, "central", 0.0),         # no room: 0, which the caller refuses
    ])
    def test_fit_to_bounds(self, x, lower, upper, name, step):
        scheme, h = fit_to_bounds(get_scheme("central"), x, 0.25, lower, upper)
        assert (scheme.name, h) == (name, pytest.approx(step, abs=1e-15))
        assert all(lower <= x + m * h <= upper for m in scheme.multiples)


def test_the_complex_step_is_im_f_over_h_at_one_point_without_f_of_x():
    """``Im f(x + ih) / h``: one multiple, no f(x), second order, divided by h or the stored step."""
    assert (COMPLEX.name, COMPLEX.multiples, COMPLEX.uses_center, COMPLEX.order,
            COMPLEX.complex_step) == ("complex", (1,), False, 2, True)
    assert COMPLEX.combine([3.0], None, 0.5) == 6.0
    assert COMPLEX.combine_stored([3.0], None, [0.25]) == 12.0


def test_the_default_step_is_the_teaching_texts_h():
    from engine import numerical_gradient

    f = lambda v: float(np.sum(v ** 3))  # noqa: E731
    x = np.array([0.5, -1.5])
    assert DEFAULT_STEP == 1e-4
    assert np.array_equal(numerical_gradient(f, x.copy()), numerical_gradient(f, x.copy(), h=1e-4))


def test_auto_is_one_none_per_array():
    assert resolve_steps("auto", ["a", "b", "c"], ["x['a']", "x['b']", "x['c']"]) == [None] * 3


def test_an_integer_step_too_large_for_a_float_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match=r"`h` must be a positive finite number, got 1000.* \(too "
                                         r"large for a float\)"):
        check_step(10 ** 400)


def test_a_forward_step_shrunk_with_equal_room_on_both_sides_stays_forward():
    """A forward difference has no centred form; on a tie it keeps its own direction."""
    chosen, step = fit_to_bounds(get_scheme("forward"), 0.5, 1.0, 0.25, 0.75)
    assert (chosen.multiples, step) == ((1,), 0.25)


@pytest.mark.parametrize("order, like", [(1, "forward"), (2, "central"), (4, "central4")])
def test_a_one_sided_scheme_takes_the_auto_step_of_the_scheme_of_its_order(order, like):
    for side in (1, -1):
        assert auto_step(one_sided(order, side), np.float32) == auto_step(get_scheme(like), np.float32)


@pytest.mark.parametrize("name", ["central", "forward", "central4"])
def test_a_shrunk_step_keeps_every_point_inside_despite_rounding(name):
    """The step that fits in exact arithmetic is taken down an ulp at a time until the
    rounded points fit too (random bounds with a fixed seed, among them points that
    rounding would put an ulp outside)."""
    rng = np.random.default_rng(7)
    scheme = get_scheme(name)
    for lower, base, upper in np.sort(rng.uniform(-3.0, 3.0, size=(300, 3)), axis=1):
        chosen, step = fit_to_bounds(scheme, float(base), 10.0, float(lower), float(upper))
        assert step > 0
        assert all(lower <= base + m * step <= upper for m in chosen.multiples)


def test_a_dict_of_steps_takes_auto_per_key_and_refuses_another_string():
    keys, labels = ["a", "b"], ["x['a']", "x['b']"]
    assert resolve_steps({"a": "auto", "b": 0.5}, keys, labels) == [None, 0.5]
    with pytest.raises(TypeError, match=r"`h\['a'\]` must be a positive finite number, got str 'fast'"):
        resolve_steps({"a": "fast", "b": 0.5}, keys, labels)


def _user_scheme(multiples, order):
    """A Scheme object built by a user (get_scheme passes it through)."""
    return Scheme("user", multiples, 0 in multiples or len(multiples) < 2,
                  lambda v, center, h: 0.0, lambda v, center, s: 0.0, order=order,
                  auto_root=order + 1)


def test_a_scheme_of_order_above_four_falls_back_to_the_one_sided_scheme_of_order_four():
    sixth = _user_scheme((3, 2, 1, -1, -2, -3), 6)
    chosen, step = fit_to_bounds(sixth, 0.0, 0.1, 0.0, 1.0)
    assert (chosen.name, chosen.multiples, step) == ("one-sided4+", (1, 2, 3, 4), 0.1)


@pytest.mark.parametrize("multiples", [(0, 1), (-1, 0)], ids=["up-from-x", "down-to-x"])
def test_a_scheme_with_points_on_one_side_only_is_never_shrunk_as_a_centred_one(multiples):
    """With no room for h on either side, only a scheme with points on both sides of x is
    kept as the centred option; one that ends at x gives way to the one-sided scheme."""
    scheme = _user_scheme(multiples, 1)
    chosen, step = fit_to_bounds(scheme, 0.5, 1.0, 0.25, 0.75)
    assert (chosen.name, step) == ("one-sided1+", 0.25)
