"""engine-train, held after one step until a signal arrives: a run that a test can always
interrupt before it ends, on a fast idle machine as on a loaded one (tests/test_resume.py).

Usage: ``python tests/_held_train.py HOLD_STEP ARGS...``, ARGS as for ``engine-train``.

The run is engine-train's own ``main``; after step HOLD_STEP (its checkpoint written, if one is
due) it waits in ``signal.pause()``. SIGKILL ends it there; SIGINT and SIGTERM reach
engine-train's handling (checkpoint, exit 130 / 143) as they would at any other step. Up to
HOLD_STEP the run's numbers are engine-train's: the hook only waits.
"""
import signal
import sys

import engine.cli.train as train


def hold_after(step: int) -> None:
    """Make engine-train wait for a signal once `step` is done."""
    after_step = train._after_step

    def after_step_then_hold(trainer, run, bar):
        after_step(trainer, run, bar)
        if trainer.state.step == step:
            while True:
                signal.pause()

    train._after_step = after_step_then_hold


if __name__ == "__main__":
    hold_after(int(sys.argv[1]))
    sys.exit(train.main(sys.argv[2:]))
