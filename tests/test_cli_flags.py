"""The flags engine-train and engine-gradcheck share: one definition, one meaning, one help."""
import importlib.metadata
import json
import re
import tomllib
from pathlib import Path

import pytest

from engine.cli._flags import SHARED_FLAGS, flag_words, version
from engine.cli.data import main as data_main
from engine.cli.gradcheck import _parser as gradcheck_parser
from engine.cli.gradcheck import main as gradcheck_main
from engine.cli.train import build_parser as train_parser
from engine.cli.train import main as train_main
from engine.nn._layers import ReLU
from engine.train._training import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parent.parent
TRAIN_SMALL = ["--hidden", "3", "--iters", "2", "--train-size", "6", "--test-size", "2",
               "--no-progress"]
CHECK_SMALL = ["--sizes", "784", "4", "10"]


def _action(parser, flag):
    return next(a for a in parser._actions if flag in a.option_strings)


def _without_default(text):
    return re.sub(r" \[default: [^\]]*\]$", "", text)


@pytest.mark.parametrize("flag", SHARED_FLAGS)
def test_a_shared_flag_is_the_same_in_both_commands(flag):
    train, check = _action(train_parser(), flag), _action(gradcheck_parser(), flag)
    assert _without_default(train.help) == _without_default(check.help)
    assert train.help.endswith("]") and "[default: " in train.help and "[default: " in check.help
    assert (train.type, train.choices, train.metavar) == (check.type, check.choices, check.metavar)


@pytest.mark.parametrize("parser", [train_parser, gradcheck_parser])
def test_both_parse_h_auto_and_workers_minus_one(parser):
    args = parser().parse_args(["--h", "auto", "--workers", "-1", "--h", "auto"])
    assert (args.h, args.workers) == ("auto", -1)
    assert parser().parse_args(["--h", "1e-3"]).h == 1e-3
    assert "-1 for all cores" in _action(parser(), "--workers").help


@pytest.mark.parametrize("main", [train_main, gradcheck_main])
@pytest.mark.parametrize("flags, message", [
    (["--workers", "0"], "argument --workers: 0 workers has no meaning: give 1 or more, or -1 "
                         "for all cores"),
    (["--workers", "-2"], "argument --workers: -2 workers has no meaning"),
    (["--workers", "two"], "argument --workers: 'two' is not a whole number"),
    (["--h", "0"], "argument --h: 0 is not a positive finite step; try 1e-4 or 'auto'"),
    (["--h", "big"], "argument --h: 'big' is neither a number nor 'auto'"),
    (["--activation", "softplus"], "argument --activation: invalid choice: 'softplus'"),
])
def test_both_refuse_the_same_bad_values_in_the_same_words(main, flags, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(flags)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("main, prog", [(train_main, "engine-train"),
                                        (gradcheck_main, "engine-gradcheck"),
                                        (data_main, "engine-data")])
def test_every_command_prints_its_version(main, prog, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"{prog} {version()}"


def test_the_version_is_the_projects():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert version() == project["version"]
    assert project["scripts"]["engine-data"] == "engine.cli.data:main"


def test_the_version_is_unknown_outside_an_install(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert version() == "unknown"


def test_engine_messages_come_back_in_flag_words():
    assert flag_words("`workers`=99 is more than 4 per core") == "--workers=99 is more than 4 per core"
    assert flag_words("`batch_size` 7 and `x` stay") == "--batch-size 7 and `x` stay"
    assert flag_words("Use backend='dask' for a cluster, or workers=1; keep=2 and x='y'") == \
        "Use --backend dask for a cluster, or --workers 1; keep=2 and x='y'"
    once = flag_words("`workers`=99 is too many. Use backend='dask'")
    assert once == "--workers=99 is too many. Use --backend dask" and flag_words(once) == once


def test_engine_train_runs_with_h_auto_and_relu(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main([*TRAIN_SMALL, "--workers", "1", "--h", "auto", "--activation", "relu",
                       "--out", str(out)]) == 0
    assert "training 784-3-10 (relu) on 6 images" in capsys.readouterr().out
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert (config["h"], config["activation"]) == ("auto", "relu")


def test_the_trainers_net_has_the_configs_activation():
    from engine.data._data import load_embedded_mnist
    train, test = load_embedded_mnist()
    trainer = Trainer(TrainConfig(sizes=(784, 3, 10), activation="relu", gradient="backprop"),
                      train.head(4), test.head(2))
    assert sum(isinstance(layer, ReLU) for layer in trainer.net.model.layers) == 1
    with pytest.raises(ValueError, match="`activation` must be one of"):
        TrainConfig(activation="softplus")


def test_a_resumed_run_refuses_another_activation(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main([*TRAIN_SMALL, "--workers", "1", "--out", str(out)]) == 0
    assert train_main(["--resume", str(out), "--activation", "relu", "--no-progress"]) == 2
    assert "--activation relu (checkpoint: sigmoid)" in capsys.readouterr().err


def test_engine_gradcheck_runs_with_h_auto_and_relu(capsys):
    assert gradcheck_main([*CHECK_SMALL, "--h", "auto", "--activation", "relu"]) == 0
    assert "(relu, float64, seed 0)" in capsys.readouterr().out


@pytest.mark.parametrize("main, small", [(train_main, TRAIN_SMALL), (gradcheck_main, CHECK_SMALL)])
def test_a_bad_backend_is_named_as_the_flag(main, small, capsys):
    try:
        status = main([*small, "--workers", "2", "--backend", "nosuch"])
    except SystemExit as exited:   # engine-gradcheck reports through argparse
        status = exited.code
    err = capsys.readouterr().err
    assert status == 2 and "--backend must be one of" in err and "`backend`" not in err
