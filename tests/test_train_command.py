"""engine-train's `main`, in this process, on runs of a few steps: what it prints, writes and
returns, its checkpoints, an interrupted and a diverging run, the progress bar and the plot."""
import io
import json
import os
import runpy
import signal
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from test_resume import checkpointed_steps

from engine.cli import train as train_module
from engine.cli.train import main
from engine.train._checkpoint import load_checkpoint
from engine.train._training import TrainConfig, Trainer

TINY = ["--hidden", "3", "--train-size", "6", "--test-size", "2", "--workers", "1", "--iters", "2"]


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    """matplotlib takes a second to start: runs here draw no training.png unless a test asks."""
    monkeypatch.setattr(train_module, "plots_available", lambda: False)



def stop_after(monkeypatch, step, how):
    """Make the run stop after `step` with `how()` (raising, or sending a signal)."""
    after_step = train_module._after_step

    def stopping(trainer, run, bar):
        after_step(trainer, run, bar)
        if trainer.state.step == step:
            how()
    monkeypatch.setattr(train_module, "_after_step", stopping)


class TestFinishedRun:
    def test_a_run_prints_writes_and_returns_0(self, tmp_path, capsys):
        out = tmp_path / "run"
        before = time.perf_counter()
        assert main([*TINY, "--out", str(out), "--no-progress"]) == 0
        elapsed = time.perf_counter() - before
        printed, err = capsys.readouterr()
        lines = printed.splitlines()
        assert lines[:2] == ["training 784-3-10 (sigmoid) on 6 images, 2 steps of 1, lr 0.1; "
                             "numerical gradients (central, h=0.0001, auto evaluator) on 1 "
                             "worker(s), loky", f"writing to {out}"]
        assert lines[2] == "gradient: in-process (workers=1)"
        assert lines[3].startswith("median seconds per step: ")
        assert lines[4] == f"wrote {out / 'params.npz'}, {out / 'metrics.json'}"
        metrics = json.loads((out / "metrics.json").read_text())
        assert lines[5:] == [f"train accuracy: {metrics['train_accuracy']:.4f}",
                             f"test accuracy: {metrics['test_accuracy']:.4f} "
                             f"({metrics['test_correct']}/2)"]
        assert err == "training.png not written: plots need matplotlib, " \
                      f"{train_module.EXTRA_HINT}\n"
        assert metrics["test_correct"] == round(metrics["test_accuracy"] * 2)
        assert metrics["test_total"] == 2 and len(metrics["loss"]) == 2
        assert 0 < metrics["wall_seconds_this_session"] < elapsed
        assert metrics["config"]["workers"] == 1 and metrics["config"]["backend"] == "loky"
        params, state = load_checkpoint(out)
        assert state["step"] == 2
        with np.load(out / "params.npz") as saved:
            assert set(saved.files) == set(params)
            assert all(np.array_equal(saved[name], params[name]) for name in params)

    def test_the_correct_count_is_the_accuracy_times_the_images(self, tmp_path, monkeypatch,
                                                                 capsys):
        monkeypatch.setattr(Trainer, "accuracy", lambda self, data, params=None: 0.5)
        out = tmp_path / "run"
        assert main([*TINY, "--gradient", "backprop", "--out", str(out), "--no-progress"]) == 0
        assert capsys.readouterr().out.endswith("test accuracy: 0.5000 (1/2)\n")
        assert json.loads((out / "metrics.json").read_text())["test_correct"] == 1

    def test_a_backprop_run_says_so_and_its_plot_is_drawn(self, tmp_path, monkeypatch, capsys):
        drawn = []

        def plot(losses, evaluations, file, title):
            drawn.append((len(losses), title))
            file.write(b"a plot")
        monkeypatch.setattr(train_module, "plots_available", lambda: True)
        monkeypatch.setattr(train_module, "plot_training", plot)
        out = tmp_path / "run"
        assert main([*TINY, "--gradient", "backprop", "--out", str(out), "--no-progress"]) == 0
        printed, err = capsys.readouterr()
        assert "2 steps of 1, lr 0.1; backprop\n" in printed
        assert f", {out / 'training.png'}\n" in printed and err == ""
        assert "gradient:" not in printed   # backprop: nothing to calibrate
        assert drawn == [(2, "784-3-10 (sigmoid), backprop gradients, 2 steps")]
        assert (out / "training.png").read_bytes() == b"a plot"

    def test_the_headline_is_flushed_before_the_first_step(self, tmp_path, monkeypatch):
        class Stream(io.StringIO):
            flushed = ""

            def flush(self):
                self.flushed = self.getvalue()
        stream, seen = Stream(), []
        monkeypatch.setattr(sys, "stdout", stream)
        monkeypatch.setattr(Trainer, "calibrate", lambda self: seen.append(stream.flushed))
        assert main([*TINY, "--out", str(tmp_path / "run"), "--no-progress"]) == 0
        assert seen[0].startswith("training 784-3-10 (sigmoid) on 6 images")

    def test_checkpoints_at_the_start_every_n_steps_and_the_end(self, tmp_path, monkeypatch):
        steps = checkpointed_steps(monkeypatch)
        assert main([*TINY, "--iters", "5", "--checkpoint-every", "2", "--gradient", "backprop",
                     "--out", str(tmp_path / "run"), "--no-progress"]) == 0
        assert steps == [0, 2, 4, 5]

    def test_a_calibrated_plan_is_shown_and_kept(self, tmp_path, monkeypatch, capsys):
        monkeypatch.setattr(Trainer, "calibrate", lambda self: "2 chunks on 1 worker")
        out = tmp_path / "run"
        assert main([*TINY, "--out", str(out), "--no-progress"]) == 0
        assert "gradient: 2 chunks on 1 worker\n" in capsys.readouterr().out
        assert json.loads((out / "metrics.json").read_text())["config"]["plan"] == "2 chunks on 1 worker"

    def test_the_trainer_is_closed_and_sigterm_given_back(self, tmp_path, monkeypatch):
        closed = []
        close = Trainer.close
        monkeypatch.setattr(Trainer, "close", lambda self: closed.append(1) or close(self))
        def mine(signum, frame):   # a handler of the caller's, not one a run left behind
            pass
        before = signal.signal(signal.SIGTERM, mine)
        try:
            assert main([*TINY, "--gradient", "backprop", "--out", str(tmp_path / "run"),
                         "--no-progress"]) == 0
            assert closed == [1] and signal.getsignal(signal.SIGTERM) is mine
        finally:
            signal.signal(signal.SIGTERM, before)


class TestFolders:
    def test_a_default_folder_is_numbered_and_latest_points_to_it(self, tmp_path, monkeypatch,
                                                                  capsys):
        monkeypatch.chdir(tmp_path)
        assert main([*TINY, "--gradient", "backprop", "--no-progress"]) == 0
        assert "writing to runs/run-1 (runs/latest points to it)\n" in capsys.readouterr().out
        (tmp_path / "runs" / "latest").unlink()
        (tmp_path / "runs" / "latest").mkdir()
        assert main([*TINY, "--gradient", "backprop", "--no-progress"]) == 0
        assert "writing to runs/run-2 (runs/latest is not a link: left as it is)\n" \
            in capsys.readouterr().out

    def test_force_says_what_it_replaces(self, tmp_path, capsys):
        out = tmp_path / "run"
        assert main([*TINY, "--gradient", "backprop", "--out", str(out), "--no-progress"]) == 0
        assert main([*TINY, "--gradient", "backprop", "--out", str(out), "--no-progress",
                     "--force"]) == 0
        assert f"engine-train: --force: replacing a finished run in {out}" in capsys.readouterr().err

    def test_a_refused_flag_exits_2_in_flag_words(self, tmp_path, capsys):
        assert main([*TINY, "--batch-size", "7", "--no-progress"]) == 2
        assert capsys.readouterr().err == ("engine-train: error: --batch-size 7 is more than "
                                           "the 6 training images\n")

    def test_run_as_a_module_its_status_is_mains(self, monkeypatch):
        monkeypatch.setattr(sys, "argv", ["engine-train", *TINY, "--force"])
        monkeypatch.delitem(sys.modules, "engine.cli.train")   # run afresh, as -m does
        with pytest.raises(SystemExit) as exited:
            runpy.run_module("engine.cli.train", run_name="__main__")
        assert exited.value.code == 2


def _ctrl_c():
    raise KeyboardInterrupt


class TestStopped:
    @pytest.mark.parametrize("how, status", [
        (_ctrl_c, 130), (lambda: os.kill(os.getpid(), signal.SIGTERM), 143),
    ])
    def test_an_interrupted_run_checkpoints_and_says_how_to_resume(self, tmp_path, monkeypatch,
                                                                   capsys, how, status):
        out = tmp_path / "run"
        stop_after(monkeypatch, 3, how)
        assert main([*TINY, "--iters", "5", "--gradient", "backprop", "--out", str(out),
                     "--no-progress"]) == status
        assert capsys.readouterr().err == (f"\ninterrupted at step 3 of 5; checkpoint: "
                                           f"{out / 'checkpoint.npz'}\nresume with: engine-train "
                                           f"--resume {out}\n")
        assert load_checkpoint(out)[1]["step"] == 3
        monkeypatch.undo()
        steps = checkpointed_steps(monkeypatch)
        monkeypatch.setattr(train_module, "plots_available", lambda: False)
        assert main(["--resume", str(out), "--no-progress"]) == 0
        assert ", resuming at step 3\n" in capsys.readouterr().out
        assert steps == [5]   # no second checkpoint of the start

    def test_with_the_bar_the_message_comes_after_its_last_line(self, tmp_path, monkeypatch,
                                                                capsys):
        out = tmp_path / "run"
        stop_after(monkeypatch, 1, _ctrl_c)
        assert main([*TINY, "--gradient", "backprop", "--out", str(out)]) == 130
        assert capsys.readouterr().err.endswith(f"\nresume with: engine-train --resume {out}\n")
        monkeypatch.undo()
        monkeypatch.setattr(train_module, "plots_available", lambda: False)
        assert main([*TINY, "--lr", "1e300", "--out", str(tmp_path / "diverged")]) == 2
        err = capsys.readouterr().err
        assert "engine-train: error: step " in err and err.endswith(" than 1e+300\n")

    def test_a_diverging_run_exits_2_naming_lr(self, tmp_path, capsys):
        assert main([*TINY, "--lr", "1e300", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("engine-train: error: step ")
        assert err.endswith(": training diverged; try a smaller --lr than 1e+300\n")

    def test_a_failed_step_without_divergence_names_the_step(self, tmp_path, monkeypatch, capsys):
        def fail(self, on_step=None):
            raise ValueError("`batch_size` is odd")
        monkeypatch.setattr(Trainer, "run", fail)
        assert main([*TINY, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
        assert capsys.readouterr().err == "engine-train: error: step 1 failed: --batch-size is odd\n"


def _trainer_with(*arrays):
    return SimpleNamespace(state=SimpleNamespace(params={f"w{i}": a for i, a in enumerate(arrays)}))


@pytest.mark.parametrize("arrays, grew", [
    ([np.array([1e6, -1.0])], None), ([np.array([-1e6])], None), ([], None),
    ([np.array([0.5]), np.array([-2e6, 1.0])], "2e+06"), ([np.array([1.0, np.inf])], "inf"),
    ([np.array([np.nan])], "nan"), ([np.array([np.nextafter(1e6, 2e6)])], "1e+06"),
])
def test_divergence_is_weights_past_a_million_or_not_finite(arrays, grew):
    hint = train_module._divergence_hint(_trainer_with(*arrays), TrainConfig(lr=0.5))
    expected = "" if grew is None else (f". The weights grew to {grew}: training diverged; try a "
                                        "smaller --lr than 0.5")
    assert hint == expected


def test_net_names():
    assert train_module._net_name(TrainConfig(sizes=(784, 3, 10), activation="relu")) == "784-3-10 (relu)"
    assert train_module._net_name(TrainConfig(sizes=(784, 5, 10), net="convnet")) == "convnet (784-5-10)"


def test_the_progress_bar_counts_from_the_step_reached_and_follows_the_terminal():
    trainer = SimpleNamespace(config=SimpleNamespace(steps=10), state=SimpleNamespace(step=4))
    bar = train_module._progress_bar(trainer, True)
    try:
        assert (bar.total, bar.n, bar.disable, bar.unit) == (10, 4, False, "step")
        assert bar.dynamic_ncols
    finally:
        bar.close()
    assert train_module._progress_bar(trainer, False).disable


def test_the_bar_ends_complete_before_the_results(tmp_path, monkeypatch):
    both = io.StringIO()
    monkeypatch.setattr(sys, "stdout", both)
    monkeypatch.setattr(sys, "stderr", both)
    assert main([*TINY, "--gradient", "backprop", "--out", str(tmp_path / "run")]) == 0
    text = both.getvalue()
    last_bar = text.rindex("2/2")
    assert "loss=" in text[last_bar:].splitlines()[0]
    assert last_bar < text.index("median seconds per step")


def test_a_dask_run_opens_one_client_for_the_run(monkeypatch):
    # Dask takes a second to import: a stand-in module for the one _cluster imports.
    monkeypatch.setitem(sys.modules, "engine.run._dask",
                        SimpleNamespace(open_client=lambda scheduler, workers: (scheduler, workers)))
    run = {"backend": "dask", "scheduler": "tcp://a:1", "workers": 3}
    assert train_module._cluster(run) == ("tcp://a:1", 3)
    with train_module._cluster({"backend": "loky", "scheduler": None, "workers": 3}) as nothing:
        assert nothing is None
