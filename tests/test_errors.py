"""The engine's own errors and warnings as a caller sees them (`engine._errors`).

Errors made in a worker cross a pickle on their way to the caller, so each one's message and
fields are checked after a round trip too; warnings name the caller's line, not the engine's.
"""
import inspect
import pickle

import numpy as np
import pytest

from engine._errors import RemoteTraceback, StepSizeWarning, WorkerDied, WorkerError, warn_user
from engine.derivatives._failures import tell
from engine.fd._calling import Report
from engine.fd._space import ParamSpace


def test_a_worker_error_says_its_type_and_message_and_keeps_them_through_a_pickle():
    error = WorkerError("mymodule.SolverError", "diverged at x[3]", "Traceback (...)\n")
    error.worker_traceback = "Traceback (...)\n"
    assert str(error) == "mymodule.SolverError: diverged at x[3]"
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is WorkerError and str(clone) == str(error)
    assert (clone.type_name, clone.message, clone.traceback, clone.worker_traceback) == (
        "mymodule.SolverError", "diverged at x[3]", "Traceback (...)\n", "Traceback (...)\n")


def test_a_remote_traceback_prints_its_text_between_quotes():
    cause = RemoteTraceback("Traceback (most recent call last):\nValueError: no\n")
    assert str(cause) == '\n"""\nTraceback (most recent call last):\nValueError: no\n"""'
    assert pickle.loads(pickle.dumps(cause)).text == cause.text


@pytest.mark.parametrize("exit_code", [-9, None])
def test_a_dead_worker_says_what_happened_and_keeps_its_exit_status(exit_code):
    died = WorkerDied("worker 1 died", exit_code)
    assert str(died) == "worker 1 died" and died.exit_code == exit_code


def test_a_warning_points_at_the_line_that_called_into_the_engine():
    with pytest.warns(UserWarning, match="^plain$") as direct:
        line = inspect.currentframe().f_lineno + 1
        warn_user("plain")
    report = Report(step_deviation=0.5)
    with pytest.warns(StepSizeWarning, match="up to 50.0% of h") as nested:   # two engine frames deep
        line_nested = inspect.currentframe().f_lineno + 1
        tell(ParamSpace(np.ones(2)), report, "raise")
    assert (direct[0].filename, direct[0].lineno) == (__file__, line)
    assert (nested[0].filename, nested[0].lineno) == (__file__, line_nested)
