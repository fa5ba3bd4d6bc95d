"""The trainer CLI: defaults, outputs, determinism across workers, bad flags."""
import dataclasses
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _mnist_files import write_mnist_dir
from engine.data._data import Dataset, load_embedded_mnist, write_mnist_csv
from engine.batched._detect import EVALUATOR_NAMES
from engine.fd._schemes import SCHEMES
from engine.train._training import NETS, TrainConfig
from engine.cli._setup import DEFAULTS as _DEFAULTS
from engine.nn._layers import ACTIVATIONS
from engine.cli.train import OUTPUTS, build_parser, main

QUICK = ["--hidden", "12", "--iters", "6", "--train-size", "20", "--test-size", "10", "--no-progress"]


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "engine.cli.train", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_help_documents_every_flag():
    text = build_parser().format_help()
    for flag in ["--workers", "--iters", "--epochs", "--lr", "--hidden", "--batch-size", "--h",
                 "--seed", "--train-size", "--test-size", "--train-csv", "--test-csv", "--backend",
                 "--out", "--evaluator", "--gradient", "--checkpoint-every", "--resume"]:
        assert flag in text


def test_defaults_are_the_teaching_texts_run(tmp_path, capsys, monkeypatch):
    import engine.cli.train as train_module

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
    (["--workers", "0"], "argument --workers: 0 workers has no meaning: give 1 or more, or -1"),
    (["--lr", "-1"], "--lr must be a positive finite number, got -1.0"),   # TrainConfig's words
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


@pytest.mark.parametrize("flags, message", [
    (["--backend", "nosuch"], "engine-train: error: --backend must be one of"),
    (["--seed", "-1"], "--seed must be a non-negative int, got -1"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be >= 1, got 0"),
    (["--eval-every", "-2"], "--eval-every must be a non-negative int, got -2"),
    (["--batch-size", "7"], "--batch-size 7 is more than the 6 training images"),
    (["--scheduler", "tcp://127.0.0.1:1"], "--scheduler is only used with --backend dask"),
    (["--mnist-dir", ".", "--train-csv", "x.csv"], "cannot be combined with --train-csv"),
    (["--epochs", "0"], "--epochs must be a positive number"),
])
def test_every_flag_is_checked_before_anything_is_written(tmp_path, capsys, flags, message):
    out = tmp_path / "never"
    small = ["--hidden", "3", "--iters", "2", "--train-size", "6", "--test-size", "2",
             "--workers", "1", "--no-progress"]
    assert main([*small, *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_after_a_bad_backend_the_corrected_run_is_not_refused(tmp_path, capsys):
    out = tmp_path / "run"
    small = ["--hidden", "3", "--iters", "2", "--train-size", "6", "--test-size", "2",
             "--workers", "1", "--no-progress", "--out", str(out)]
    assert main([*small, "--backend", "nosuch"]) == 2
    assert main(small) == 0, capsys.readouterr().err


@pytest.mark.parametrize("backend", ["sequential", "multiprocessing"])   # joblib's own names
def test_joblibs_registered_backends_are_accepted(tmp_path, backend):
    assert main(["--hidden", "3", "--iters", "1", "--train-size", "2", "--test-size", "2",
                 "--workers", "1", "--no-progress", "--backend", backend,
                 "--out", str(tmp_path / backend)]) == 0


def test_help_shows_each_default_once():
    parser = build_parser()
    assert "(default:" not in parser.format_help()
    for action in parser._actions:
        assert (action.help or "").count("default:") <= 1, action.option_strings
        key = action.dest
        if key in _DEFAULTS:
            shown = " ".join(map(str, _DEFAULTS[key])) if isinstance(_DEFAULTS[key], list) \
                else str(_DEFAULTS[key])
            if not isinstance(_DEFAULTS[key], bool):
                assert f"[default: {shown}" in action.help, action.option_strings


def test_the_flags_defaults_are_train_configs_fields(tmp_path, monkeypatch):
    """No flags give exactly TrainConfig(), and --help shows each field's own default."""
    import engine.cli.train as train_module

    seen = {}
    monkeypatch.setattr(train_module, "_train", lambda run, args: seen.update(run) or 0)
    assert main(["--out", str(tmp_path / "run")]) == 0
    assert seen["config"] == TrainConfig()
    helps = {action.dest: action.help for action in build_parser()._actions}
    flag_of_field = {"steps": "iters", "sizes": "hidden"}
    for field in dataclasses.fields(TrainConfig):
        help_text = helps[flag_of_field.get(field.name, field.name)]
        if field.name == "shuffle":   # a switch: off unless given
            assert field.default is False and "default:" not in help_text
            continue
        shown = " ".join(map(str, field.default[1:-1])) if field.name == "sizes" else field.default
        assert f"[default: {shown}]" in help_text, field.name


def test_the_choices_are_the_registries():
    choices = {action.dest: list(action.choices) for action in build_parser()._actions
               if action.choices is not None}
    assert choices == {"scheme": list(SCHEMES), "evaluator": ["auto", *EVALUATOR_NAMES],
                       "gradient": ["numerical", "backprop"], "activation": sorted(ACTIVATIONS),
                       "net": list(NETS)}


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


def test_trains_on_the_mnist_idx_files_taking_the_first_n(tmp_path):
    written = write_mnist_dir(tmp_path / "mnist", n_train=30, n_test=10,
                              gzipped=("train_images", "test_labels"))
    out = tmp_path / "run"
    assert main(["--mnist-dir", str(tmp_path / "mnist"), "--train-size", "12", "--test-size", "4",
                 "--hidden", "5", "--iters", "3", "--gradient", "backprop", "--no-progress",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_total"] == 4
    assert metrics["config"]["data"]["mnist_dir"] == str((tmp_path / "mnist").resolve())
    # the same first images, given as the text's CSV files, give the same parameters
    pixels, labels = written["train"]
    write_mnist_csv(tmp_path / "train.csv", Dataset(pixels[:12].reshape(12, 784) / 255.0, labels[:12]))
    pixels, labels = written["test"]
    write_mnist_csv(tmp_path / "test.csv", Dataset(pixels[:4].reshape(4, 784) / 255.0, labels[:4]))
    assert main(["--train-csv", str(tmp_path / "train.csv"), "--test-csv", str(tmp_path / "test.csv"),
                 "--hidden", "5", "--iters", "3", "--gradient", "backprop", "--no-progress",
                 "--out", str(tmp_path / "csv")]) == 0
    with np.load(out / "params.npz") as a, np.load(tmp_path / "csv" / "params.npz") as b:
        assert all(np.array_equal(a[name], b[name]) for name in a.files)


def test_mnist_dir_defaults_to_every_image(tmp_path, monkeypatch):
    import engine.cli.train as train_module

    write_mnist_dir(tmp_path / "mnist", n_train=9, n_test=5)
    seen = {}
    monkeypatch.setattr(train_module, "_train", lambda run, args: seen.update(run) or 0)
    assert main(["--mnist-dir", str(tmp_path / "mnist"), "--out", str(tmp_path / "run")]) == 0
    assert (len(seen["train"]), len(seen["test"])) == (9, 5)


def test_a_missing_mnist_file_exits_2_naming_it(tmp_path, capsys):
    write_mnist_dir(tmp_path / "mnist", n_train=3, n_test=2)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    out = tmp_path / "never"
    assert main(["--mnist-dir", str(tmp_path / "mnist"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "has no t10k-labels-idx1-ubyte (nor t10k-labels-idx1-ubyte.gz)" in err
    assert "Traceback" not in err and not out.exists()


def readme_trainer_section() -> dict[str, str]:
    """The README's "engine-train: flags and outputs" paragraphs, by their bold name."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split("### engine-train: flags and outputs", 1)[1].split("\n## ", 1)[0]
    paragraphs = {}
    for paragraph in section.split("\n\n"):
        if paragraph.startswith("**"):
            paragraphs[paragraph[2:].split("**", 1)[0]] = paragraph
        elif paragraph.startswith("- ") and paragraphs:
            paragraphs[list(paragraphs)[-1]] += "\n" + paragraph
    return paragraphs


def test_readme_lists_exactly_the_parsers_flags_and_the_outputs():
    section = readme_trainer_section()
    listed = re.findall(r"`(--[a-z0-9-]+)`", section["Flags"])
    flags = [s for a in build_parser()._actions for s in a.option_strings if s.startswith("--")]
    flags.remove("--help")
    assert sorted(listed) == sorted(flags)
    outputs = re.findall(r"^- `([^`]+)`", section["Outputs"], flags=re.MULTILINE)
    assert sorted(outputs) == sorted(OUTPUTS) == sorted(
        ["params.npz", "metrics.json", "training.png", "checkpoint.npz"])
