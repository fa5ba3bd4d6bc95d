"""The trainer CLI: defaults, outputs, determinism across workers, bad flags."""
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from engine.data import load_embedded_mnist, write_mnist_csv
from engine.train import build_parser, main

QUICK = ["--hidden", "12", "--iters", "6", "--train-size", "20", "--test-size", "10", "--no-progress"]


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "engine.train", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_help_documents_every_flag():
    text = build_parser().format_help()
    for flag in ["--workers", "--iters", "--epochs", "--lr", "--hidden", "--batch-size", "--h",
                 "--seed", "--train-size", "--test-size", "--train-csv", "--test-csv", "--backend",
                 "--out", "--evaluator", "--gradient", "--checkpoint-every", "--resume"]:
        assert flag in text


def test_defaults_are_the_teaching_texts_run(tmp_path, capsys, monkeypatch):
    import engine.train as train_module

    seen = {}
    monkeypatch.setattr(train_module, "_train",
                        lambda run, args: seen.update(run) or 0)
    assert main(["--out", str(tmp_path / "run")]) == 0
    config = seen["config"]
    assert config.sizes == (784, 100, 10) and config.weight_init_std == 0.01
    assert config.lr == 0.1 and config.steps == 100 and config.batch_size == 1
    assert config.h == 1e-4 and config.scheme == "central" and not config.shuffle
    assert len(seen["train"]) == 100 and len(seen["test"]) == 10


def test_a_short_run_writes_its_outputs_and_ends_with_the_accuracy(tmp_path):
    out = tmp_path / "run"
    result = run_cli(*QUICK, "--workers", "2", "--out", out)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("test accuracy: 0.") and last.endswith("/10)")
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["loss"]) == len(metrics["seconds"]) == 6
    assert metrics["config"]["lr"] == 0.1 and metrics["test_total"] == 10
    with np.load(out / "params.npz", allow_pickle=False) as params:
        assert params["w1"].shape == (784, 12)
    assert (out / "training.png").stat().st_size > 10_000


def test_params_are_bit_identical_whatever_the_worker_count(tmp_path):
    outputs = []
    for workers, evaluator in [(1, "loop"), (2, "loop"), (1, "batched"), (2, "batched")]:
        out = tmp_path / f"w{workers}-{evaluator}"
        args = ["--hidden", "6", "--iters", "3", "--train-size", "5", "--no-progress",
                "--evaluator", evaluator, "--workers", str(workers), "--out", str(out)]
        assert main(args) == 0
        outputs.append(dict(np.load(out / "params.npz")))
    for first, second in [(outputs[0], outputs[1]), (outputs[2], outputs[3])]:
        for name in first:
            assert np.array_equal(first[name], second[name]), name


def test_epochs_and_backprop(tmp_path):
    out = tmp_path / "bp"
    assert main(["--gradient", "backprop", "--epochs", "2", "--train-size", "30", "--batch-size", "10",
                 "--shuffle", "--no-progress", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["loss"]) == 6
    assert [e["epoch"] for e in metrics["evaluations"]] == [1, 2]


def test_trains_from_the_texts_csv_files(tmp_path):
    train, test = load_embedded_mnist()
    write_mnist_csv(tmp_path / "mnist_train_100.csv", train.head(8))
    write_mnist_csv(tmp_path / "mnist_test_10.csv", test.head(4))
    out = tmp_path / "run"
    assert main(["--train-csv", str(tmp_path / "mnist_train_100.csv"), "--test-csv",
                 str(tmp_path / "mnist_test_10.csv"), "--hidden", "5", "--iters", "8",
                 "--no-progress", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["test_total"] == 4


@pytest.mark.parametrize("flags, message", [
    (["--workers", "0"], "`workers` == 0"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--train-csv", "no/such/file.csv"], "no such file"),
    (["--train-size", "5000"], "more than the 4000 images"),
    (["--hidden", "0"], "--hidden widths must be positive"),
])
def test_bad_flags_exit_2_and_write_nothing(tmp_path, flags, message):
    out = tmp_path / "never"
    result = run_cli(*flags, "--out", out)
    assert result.returncode == 2
    assert message in result.stderr
    assert not out.exists()


def test_bad_csv_data_exits_2_naming_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("3," + ",".join(["0"] * 784) + "\n12," + ",".join(["0"] * 784) + "\n")
    result = run_cli("--train-csv", bad, "--out", tmp_path / "never")
    assert result.returncode == 2
    assert "bad.csv" in result.stderr and "line 2" in result.stderr
    assert not (tmp_path / "never").exists()


def test_argparse_errors_exit_2():
    result = run_cli("--iters", "many")
    assert result.returncode == 2 and "invalid int value" in result.stderr


def test_outputs_get_the_mode_the_umask_gives_a_new_file(tmp_path):
    out = tmp_path / "run"
    saved = os.umask(0o022)
    try:
        assert main([*QUICK, "--iters", "2", "--workers", "1", "--out", str(out)]) == 0
    finally:
        os.umask(saved)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in out.iterdir()
             if not path.name.startswith(".")}
    assert modes == dict.fromkeys(["checkpoint.npz", "params.npz", "metrics.json", "training.png"],
                                  0o644)
