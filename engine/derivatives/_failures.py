"""What a call tells its caller about the evaluations it replaced and the steps it took."""
from __future__ import annotations

from typing import NamedTuple

from .._errors import NumericalFallbackWarning, StepSizeWarning, warn_user
from ..fd._evaluators import Report
from ..fd._space import ParamSpace

__all__ = ["Failure", "tell"]

_STEP_TOLERANCE = 0.01       # warn when the stored step differs from h by more than this share


class Failure(NamedTuple):
    """An evaluation of `f` that failed and was replaced (see ``on_failure``)."""

    entry: str      # e.g. "x['w1'][2, 3]"
    side: str       # "x_i + 1*h" or "x_i - 1*h"
    error: str      # the exception's type name (FloatingPointError for a non-finite value)
    message: str


def tell(space: ParamSpace, report: Report, on_failure: str) -> list[Failure]:
    """Warn once per call about replaced evaluations and steps that are not `h`; the failures."""
    failures = [_failure(space, flat, m, error, message)
                for flat, m, error, message in sorted(report.failures, key=_order)]
    if failures:
        listed = "; ".join(f"{f.entry} at {f.side}: {f.error}: {f.message}" for f in failures[:10])
        more = f" (and {len(failures) - 10} more)" if len(failures) > 10 else ""
        warn_user(f"{len(failures)} evaluation(s) of `f` failed and were replaced "
                  f"(on_failure={on_failure!r}): {listed}{more}", NumericalFallbackWarning)
    if report.step_deviation > _STEP_TOLERANCE:
        warn_user(f"the step actually stored, dtype(x_i + h) - x_i, differs from `h` by "
                  f"up to {report.step_deviation:.1%} of h: the difference is divided by "
                  "the nominal h (the teaching text's formula). h='auto' divides by the "
                  "stored step", StepSizeWarning)
    return failures


def _failure(space: ParamSpace, flat: int, m: int | tuple, error: str, message: str) -> Failure:
    """A failure at ``x_i + m*h``, or (a Hessian's) at a point ``((i, m_i), (j, m_j))``."""
    if isinstance(m, tuple):
        entry = ", ".join(space.describe(i) for i, _ in m)
        side = ", ".join(f"x_{'ij'[k]} {'+' if s > 0 else '-'} {abs(s)}*h" for k, (_, s) in enumerate(m))
        return Failure(entry, side, error, message)
    return Failure(space.describe(flat), f"x_i {'+' if m > 0 else '-'} {abs(m)}*h", error, message)


def _order(failure: tuple) -> tuple:
    flat, m = failure[:2]
    return (flat, m if isinstance(m, tuple) else ((flat, m),), *failure[2:])
