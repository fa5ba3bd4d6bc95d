"""engine-train's preparation (`engine.cli._setup.prepare`), in this process: every flag, the
data and a resumed checkpoint are checked and turned into the run's settings, nothing trained."""
import importlib.util
import json
import shutil
import sys

import numpy as np
import pytest

from _mnist_files import write_mnist_dir
from engine.cli import _setup
from engine.cli._setup import CHECKPOINT_EVERY, UsageError, prepare
from engine.cli import train as train_module
from engine.cli.train import build_parser
from engine.cli.train import main as train_main
from engine.data import _data as data_module
from engine.data._data import load_embedded_mnist, write_mnist_csv
from engine.train._checkpoint import CHECKPOINT_NAME, CheckpointError
from engine.train._training import TrainConfig

SMALL = ["--hidden", "3", "--train-size", "6", "--test-size", "2", "--workers", "1"]


def prepared(*flags):
    return prepare(build_parser().parse_args([*map(str, flags)]))


def refused(*flags, error=UsageError):
    """The message `prepare` refuses these flags with."""
    with pytest.raises(error) as info:
        prepared(*flags)
    return str(info.value)


@pytest.fixture(scope="module")
def embedded():
    return load_embedded_mnist()


@pytest.fixture(autouse=True)
def loaded_once(embedded, monkeypatch):
    """The embedded split read once for the file (0.1 s a read), not once a run."""
    monkeypatch.setattr(_setup, "load_embedded_mnist", lambda: embedded)


class TestFreshRun:
    def test_no_flags_give_the_teaching_texts_run(self, embedded):
        run = prepared()
        assert run["config"] == TrainConfig()
        assert run["data"] == {"train_csv": None, "test_csv": None, "mnist_dir": None,
                               "train_size": 100, "test_size": 10}
        assert np.array_equal(run["train"].images, embedded[0].head(100).images)
        assert np.array_equal(run["test"].labels, embedded[1].head(10).labels)
        assert (run["out"], run["state"], run["checkpoint_every"]) == (None, None, 100)
        assert (run["backend"], run["scheduler"], run["progress"]) == ("loky", None, True)
        assert run["workers"] == run["execution"].n_workers >= 1

    def test_the_flags_given_are_the_ones_used(self, tmp_path):
        run = prepared(*SMALL, "--iters", "7", "--lr", "0.5", "--batch-size", "6", "--seed", "3",
                       "--checkpoint-every", "1", "--out", tmp_path, "--no-progress")
        assert run["config"] == TrainConfig(sizes=(784, 3, 10), lr=0.5, batch_size=6, steps=7, seed=3)
        assert (len(run["train"]), len(run["test"])) == (6, 2)
        assert (run["out"], run["checkpoint_every"], run["progress"]) == (tmp_path, 1, False)
        assert (run["workers"], run["execution"].n_workers) == (1, 1)

    @pytest.mark.parametrize("epochs, batch, steps", [(2, 3, 4), (2, 4, 4), (3, 6, 3), (1, 1, 6)])
    def test_epochs_count_a_last_short_batch_as_a_step(self, epochs, batch, steps):
        run = prepared(*SMALL, "--epochs", epochs, "--batch-size", batch)
        assert run["config"].steps == steps

    @pytest.mark.parametrize("flags, message", [
        (["--checkpoint-every", "0"], "--checkpoint-every must be >= 1, got 0"),
        (["--scheduler", "tcp://x:1"], "--scheduler is only used with --backend dask"),
        (["--backend", "nosuch"], "--backend must be one of"),
        (["--backend", "dsak", "--scheduler", "tcp://x:1"], "--backend must be one of"),
        (["--workers", "100000"], "--workers"),
        (["--hidden", "3", "0"], "--hidden widths must be positive, got [3, 0]"),
        (["--net", "convnet", "--hidden", "3", "4"], "--net convnet has one hidden layer: give "
                                                     "one --hidden width, got [3, 4]"),
        (["--iters", "0"], "--iters must be a positive number, got 0"),
        (["--epochs", "0"], "--epochs must be a positive number, got 0"),
        (["--train-size", "0"], "--train-size must be a positive number, got 0"),
        (["--test-size", "-1"], "--test-size must be a positive number, got -1"),
        (["--lr", "-1"], "--lr must be a positive finite number, got -1.0"),
        (["--mnist-dir", "d", "--train-csv", "f"], "--mnist-dir gives both splits"),
        (["--mnist-dir", "d", "--test-csv", "f"], "--mnist-dir gives both splits"),
        (["--force"], "--force replaces the run in --out; without --out"),
        (["--batch-size", "7"], "--batch-size 7 is more than the 6 training images"),
        (["--train-size", "4001"], "--train-size 4001 is more than the 4000 images available"),
        (["--test-size", "1001"], "--test-size 1001 is more than the 1000 images available"),
        (["--train-csv", "no-such.csv"], "--train-csv: no such file: no-such.csv"),
        (["--test-csv", "no-such.csv"], "--test-csv: no such file: no-such.csv"),
    ])
    def test_a_bad_flag_is_refused_naming_it(self, flags, message):
        # SMALL first: the flags given later replace its values.
        assert message in refused(*SMALL, *flags)

    def test_the_least_values_are_accepted(self):
        run = prepared("--hidden", "1", "--train-size", "1", "--test-size", "1", "--iters", "1",
                       "--checkpoint-every", "1", "--batch-size", "1", "--workers", "1")
        assert run["config"].sizes == (784, 1, 10) and run["checkpoint_every"] == 1
        run = prepared(*SMALL, "--net", "convnet", "--batch-size", "6", "--epochs", "1")
        assert run["config"].net == "convnet" and run["config"].steps == 1
        assert prepared(*SMALL, "--hidden", "3", "4")["config"].sizes == (784, 3, 4, 10)

    def test_force_with_out_is_accepted(self, tmp_path):
        assert prepared(*SMALL, "--force", "--out", tmp_path)["out"] == tmp_path

    def test_dask_needs_its_distributed_package(self, monkeypatch):
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *rest: None if name == "distributed" else find_spec(name, *rest))
        assert "--backend dask needs Dask's distributed package" in refused(*SMALL, "--backend", "dask")
        assert "--scheduler is only used" in refused(*SMALL, "--scheduler", "tcp://x:1")

    def test_without_the_embedded_digits_the_error_says_how_to_give_data(self, monkeypatch):
        monkeypatch.setattr(_setup, "load_embedded_mnist", data_module.load_embedded_mnist)
        monkeypatch.setattr(data_module, "EMBEDDED_FILE", "no_such_file.npz")
        monkeypatch.setitem(sys.modules, "mlxtend", None)
        message = refused(*SMALL)
        assert "no_such_file.npz" in message and "--train-csv / --test-csv or --mnist-dir" in message


class TestDataFiles:
    def test_a_csv_file_is_read_whole_and_named_by_its_full_path(self, embedded, tmp_path,
                                                                 monkeypatch):
        path = write_mnist_csv(tmp_path / "train.csv", embedded[0].head(9))
        monkeypatch.chdir(tmp_path)
        run = prepared("--hidden", "3", "--workers", "1", "--train-csv", "train.csv")
        assert run["data"] == {"train_csv": str(path), "test_csv": None, "mnist_dir": None,
                               "train_size": None, "test_size": 10}
        assert np.array_equal(run["train"].images, embedded[0].head(9).images)
        assert np.array_equal(run["test"].images, embedded[1].head(10).images)

    def test_a_test_csv_file_and_the_embedded_train_split(self, embedded, tmp_path):
        path = write_mnist_csv(tmp_path / "test.csv", embedded[1].head(4))
        run = prepared(*SMALL, "--test-csv", path, "--test-size", "3")
        assert (run["data"]["test_csv"], run["data"]["test_size"]) == (str(path), 3)
        assert np.array_equal(run["test"].labels, embedded[1].head(3).labels)
        assert np.array_equal(run["train"].labels, embedded[0].head(6).labels)
        assert len(prepared(*SMALL, "--test-csv", path, "--test-size", "4")["test"]) == 4

    def test_an_mnist_folder_gives_both_splits(self, tmp_path):
        written = write_mnist_dir(tmp_path / "mnist", n_train=5, n_test=3)
        run = prepared("--hidden", "3", "--workers", "1", "--mnist-dir", tmp_path / "mnist",
                       "--test-size", "2")
        assert run["data"] == {"train_csv": None, "test_csv": None,
                               "mnist_dir": str((tmp_path / "mnist").resolve()),
                               "train_size": None, "test_size": 2}
        assert np.array_equal(run["train"].labels, written["train"][1])
        assert np.array_equal(run["test"].labels, written["test"][1][:2])

    def test_a_missing_mnist_file_is_named_as_the_flags(self, tmp_path):
        write_mnist_dir(tmp_path, n_train=2, n_test=2)
        (tmp_path / "t10k-labels-idx1-ubyte").unlink()
        assert refused("--mnist-dir", tmp_path).startswith("--mnist-dir: ")


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A finished run of 2 backprop steps with a checkpoint every step; its folder."""
    out = tmp_path_factory.mktemp("checkpointed") / "run"
    with pytest.MonkeyPatch.context() as patch:   # no training.png: matplotlib is slow to start
        patch.setattr(train_module, "plots_available", lambda: False)
        assert train_main([*SMALL, "--iters", "2", "--gradient", "backprop", "--lr", "0.2",
                           "--checkpoint-every", "1", "--out", str(out), "--no-progress"]) == 0
    return out


def _edited_copy(folder, tmp_path, edit):
    """A copy of the run in `folder` whose checkpoint document went through `edit`."""
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    path = copy / CHECKPOINT_NAME
    with np.load(path) as data:
        arrays = dict(data)
    document = json.loads(str(arrays["state.json"]))
    edit(document)
    arrays["state.json"] = np.array(json.dumps(document))
    np.savez(path, **arrays)
    return copy


class TestResume:
    def test_a_resumed_run_takes_its_settings_from_the_checkpoint(self, checkpointed):
        run = prepared("--resume", checkpointed, "--workers", "1")
        assert run["config"] == TrainConfig(sizes=(784, 3, 10), lr=0.2, steps=2, gradient="backprop")
        assert run["data"]["train_size"] == 6 and len(run["train"]) == 6 and len(run["test"]) == 2
        assert (run["out"], run["state"].step, run["checkpoint_every"]) == (checkpointed, 2, 1)
        assert prepared("--resume", checkpointed, "--checkpoint-every", "5")["checkpoint_every"] == 5

    def test_the_same_values_again_and_its_own_folder_are_accepted(self, checkpointed):
        run = prepared("--resume", checkpointed, "--lr", "0.2", "--hidden", "3", "--iters", "2",
                       "--train-size", "6", "--out", checkpointed)
        assert run["out"] == checkpointed

    @pytest.mark.parametrize("flags, message", [
        (["--lr", "0.5"], "these flags differ: --lr 0.5 (checkpoint: 0.2)"),
        (["--hidden", "4", "--iters", "3"], "--iters 3 (checkpoint: 2); --hidden [4] (checkpoint: [3])"),
        (["--epochs", "1"], "--epochs/--train-csv/--test-csv/--mnist-dir (the checkpoint fixes"),
        (["--train-csv", "x.csv"], "--epochs/--train-csv/--test-csv/--mnist-dir"),
        (["--force"], "--force is for a fresh run into --out; --resume replaces nothing"),
    ])
    def test_flags_that_would_change_it_are_refused(self, checkpointed, flags, message):
        assert message in refused("--resume", checkpointed, *flags)

    def test_another_out_is_refused(self, checkpointed, tmp_path):
        message = refused("--resume", checkpointed, "--out", tmp_path)
        assert f"--out {tmp_path} cannot move it" in message

    def test_a_checkpoint_without_its_configuration_is_refused(self, checkpointed, tmp_path):
        copy = _edited_copy(checkpointed, tmp_path, lambda document: document.pop("config"))
        message = refused("--resume", copy, error=CheckpointError)
        assert f"checkpoint in {copy} lacks its configuration" in message

    def test_a_checkpoint_that_does_not_fit_its_data_is_refused(self, checkpointed, tmp_path):
        copy = _edited_copy(checkpointed, tmp_path,
                            lambda document: document["data"].update(train_size=5))
        message = refused("--resume", copy, error=CheckpointError)
        assert message == f"checkpoint in {copy} does not fit the 5 training images"

    def test_a_checkpoint_without_its_training_state_is_refused(self, checkpointed, tmp_path):
        copy = _edited_copy(checkpointed, tmp_path, lambda document: document.pop("epoch"))
        message = refused("--resume", copy, error=CheckpointError)
        assert f"checkpoint in {copy} lacks its training state" in message

    def test_a_checkpoint_without_its_every_takes_the_default(self, checkpointed, tmp_path):
        copy = _edited_copy(checkpointed, tmp_path, lambda document: document.pop("checkpoint_every"))
        assert prepared("--resume", copy)["checkpoint_every"] == CHECKPOINT_EVERY


def test_the_defaults_are_train_configs_and_the_books_sizes():
    assert _setup.DEFAULTS["hidden"] == [100] and _setup.DEFAULTS["iters"] == 100
    assert (_setup.DEFAULTS["train_size"], _setup.DEFAULTS["test_size"]) == (100, 10)
    assert _setup.EXIT_BAD_INPUT == 2
