"""engine-train, held after one step until a signal arrives: a run that a test can always
interrupt before it ends, on a fast idle machine as on a loaded one (tests/test_resume.py,
tests/test_run_folder.py).

Usage: ``python tests/_held_train.py HOLD_STEP ARGS...``, ARGS as for ``engine-train``.

The run is engine-train's own ``main``; after step HOLD_STEP (its checkpoint written, if one is
due) it waits for a signal. SIGUSR1 lets it go on to its end (sent early, it waits, pending, for
the hold); SIGKILL ends it; SIGINT and SIGTERM reach engine-train's handling (checkpoint, exit
130 / 143) as they would at any other step. The hook only waits: the numbers are engine-train's.
"""
import signal
import sys

import engine.cli.train as train

RELEASE = signal.SIGUSR1


def hold_after(step: int) -> None:
    """Make engine-train wait for a signal once `step` is done."""
    # Blocked from the start, so that a release sent before the hold is kept, not fatal.
    signal.pthread_sigmask(signal.SIG_BLOCK, {RELEASE})
    after_step = train._after_step

    def after_step_then_hold(trainer, run, bar):
        after_step(trainer, run, bar)
        if trainer.state.step == step:
            signal.sigwaitinfo({RELEASE})   # SIGINT / SIGTERM raise out of it, through their handlers

    train._after_step = after_step_then_hold


if __name__ == "__main__":
    hold_after(int(sys.argv[1]))
    sys.exit(train.main(sys.argv[2:]))
