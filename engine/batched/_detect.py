"""Which evaluator a call takes: is `f` a layered model's loss that the batched evaluator can run?

The finite-difference core knows nothing of models; this module, beside the batched
evaluator, recognises them: a model's own ``model.loss`` (called as ``f(params, inputs,
labels)``) or an `engine.ModelLoss` over `x`.
"""
from __future__ import annotations

from typing import Any, Callable

from .._errors import warn_user
from ..fd._evaluators import loop_evaluate, with_arguments
from ..nn._model import ModelLoss, Sequential
from . import _batched
from ._batched import BATCHED_KINDS, unsupported_layer

__all__ = ["is_model_objective", "model_of", "bind", "get_evaluator", "choose_evaluator",
           "EVALUATOR_NAMES", "AUTO_EVALUATOR", "EVALUATOR_CHOICES"]

EVALUATOR_NAMES = ("loop", "batched")
AUTO_EVALUATOR = "auto"   # batched where the model allows, else loop
EVALUATOR_CHOICES = (AUTO_EVALUATOR, *EVALUATOR_NAMES)


def is_model_objective(f: Any) -> bool:
    """True for a layered model's own loss, ``model.loss(params, x, t)`` (a bound method)."""
    return getattr(f, "__func__", None) is Sequential.loss and isinstance(f.__self__, Sequential)


def model_of(f: Any) -> Sequential | None:
    """The `Sequential` whose loss `f` is (a `ModelLoss` or ``model.loss``), else None."""
    if isinstance(f, ModelLoss):
        return f.model
    return f.__self__ if is_model_objective(f) else None


def bind(f: Callable, args: tuple, x: Any) -> Callable:
    """``f(x, *args)`` as the one-argument callable ``g(x)`` that the evaluators call.

    A model's own loss ``model.loss`` with ``args = (inputs, labels)`` becomes a
    `ModelLoss` over `x`, which the batched evaluator understands.

    Raises
    ------
    TypeError
        If `f` is ``model.loss`` and `args` is not ``(inputs, labels)``.
    """
    if is_model_objective(f):
        if len(args) != 2:
            raise TypeError("`f` is a model's loss, f(params, x, t): call the gradient with the "
                            f"params, the inputs and the labels, got {len(args)} argument(s) "
                            "after the params")
        return ModelLoss(f.__self__, x, *args)
    return with_arguments(f, args)


def get_evaluator(name: str) -> Callable:
    """The evaluation function registered under `name` (``"loop"`` or ``"batched"``)."""
    if name == "loop":
        return loop_evaluate
    if name == "batched":
        return _batched.batched_evaluate   # looked up at call time, so a test can wrap it
    raise ValueError(f"`evaluator` must be one of {EVALUATOR_NAMES} or {AUTO_EVALUATOR!r}, got {name!r}")



def choose_evaluator(evaluator: str, f: Any, x: Any, loop_only: str | None = None) -> str:
    """Resolve ``"auto"`` to ``"batched"`` where `f` is a layered model's loss over `x`.

    `loop_only` names an option that only the loop evaluator supports, if one is set.
    ``"auto"`` warns where it would have chosen ``"batched"`` but a layer of the model
    is neither affine nor elementwise (see `engine._batched.unsupported_layer`).

    Raises
    ------
    ValueError
        For an unknown name, or ``"batched"`` with an `f`, a layer or an option it cannot
        evaluate.
    """
    batched_ok = (isinstance(f, ModelLoss) and f.params is x) or (
        is_model_objective(f) and isinstance(x, dict))
    layer = unsupported_layer(model_of(f)) if batched_ok else None
    if evaluator == AUTO_EVALUATOR:
        if isinstance(f, ModelLoss) and not batched_ok:
            warn_user("`f` is a ModelLoss, but `x` is not its params dict, so evaluator='auto' "
                      "uses the loop evaluator (about 1,000x slower on the book's net): pass "
                      "x = f.params")
        if layer is not None and loop_only is None:
            warn_user(f"the model of `f` has the layer {layer!r}, whose `kind` is not one of "
                      f"{BATCHED_KINDS}, so evaluator='auto' uses the loop evaluator (the "
                      "batched one takes only such layers)")
        return "batched" if batched_ok and layer is None and loop_only is None else "loop"
    if evaluator not in EVALUATOR_NAMES:
        raise ValueError(f"`evaluator` must be one of {EVALUATOR_CHOICES}, got {evaluator!r}")
    if evaluator == "batched" and loop_only is not None:
        raise ValueError(f"evaluator='batched' does not support {loop_only}: use 'loop' or 'auto'")
    if evaluator == "batched" and not batched_ok:
        raise ValueError(
            "evaluator='batched' needs `f` to be a layered model's loss: `model.loss` with a "
            "params dict as `x` (g(params, inputs, labels)), or an engine.ModelLoss "
            "over `x` (net.loss_function(inputs, labels) with x = net.params); use 'loop' "
            "for any other f")
    if evaluator == "batched" and layer is not None:
        raise ValueError(f"evaluator='batched' cannot take the layer {layer!r} of the model of "
                         f"`f`: its `kind` is not one of {BATCHED_KINDS} (see engine._layers); "
                         "use 'loop' or 'auto'")
    return evaluator
