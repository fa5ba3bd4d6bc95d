"""The package's surface: its exports, and its modules run as commands without warnings."""
import importlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import engine

PACKAGE = Path(engine.__file__).parent
COMMANDS = ["engine.cli.data", "engine.cli.gradcheck", "engine.cli.train"]
EXPORTS = {
    "numerical_gradient": "derivatives._serial", "parallel_numerical_gradient": "derivatives._parallel",
    "jacobian": "derivatives._parallel", "Gradient": "derivatives._gradient",
    "Jacobian": "derivatives._sparse",
    "hessian": "derivatives._hessian", "Hessian": "derivatives._hessian",
    "group_columns": "fd._grouping", "Plan": "run._planning",
    "Failure": "derivatives._failures",
    "gradient_with_error": "derivatives._with_error", "GradientWithError": "derivatives._with_error",
    "Execution": "run._execution", "gradient_check": "train._gradcheck",
    "GradientDifference": "train._gradcheck", "format_table": "train._gradcheck", "SimpleNet": "book._nets",
    "ThreeLayerNet": "book._nets", "MLP": "book._nets", "SimpleConvNet": "book._convnet",
    "Convolution": "nn._conv", "Pooling": "nn._conv", "Reshape": "nn._conv",
    "BatchNormalization": "nn._regularize", "Dropout": "nn._regularize",
    "Sequential": "nn._model", "mlp": "nn._model",
    "ModelLoss": "nn._model", "Layer": "nn._layers", "Affine": "nn._layers", "Sigmoid": "nn._layers",
    "ReLU": "nn._layers", "Tanh": "nn._layers", "SoftmaxCrossEntropy": "nn._layers",
    "Trainer": "train._training", "TrainConfig": "train._training", "TrainingState": "train._training",
    "Dataset": "data._data", "DataError": "data._data", "load_embedded_mnist": "data._data",
    "read_mnist_csv": "data._data", "write_mnist_csv": "data._data", "PayloadError": "_errors",
    "StateNotShippedError": "_errors", "NotDeterministicError": "_errors", "WorkerError": "_errors",
    "WorkerLostError": "_errors",
    "NumericalFallbackWarning": "_errors", "StepSizeWarning": "_errors",
}


def test_every_export_is_its_modules_object():
    assert sorted(engine.__all__) == sorted(EXPORTS)
    for name, module in EXPORTS.items():
        assert getattr(engine, name) is getattr(importlib.import_module(f"engine.{module}"), name)
    namespace = {}
    exec("from engine import *", namespace)
    assert set(EXPORTS) <= set(namespace)


def test_the_public_surface_is_all_and_the_commands():
    """Every module is private (a leading underscore) but the commands, whose one name is main."""
    public = sorted(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
                    for path in PACKAGE.rglob("*.py") if not path.stem.startswith("_"))
    assert public == COMMANDS
    for command in COMMANDS:
        assert importlib.import_module(command).__all__ == ["main"]
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert {name for name in dir(engine) if not name.startswith("_")} - packages == set(engine.__all__)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        engine.no_such_name  # noqa: B018  the attribute access is the test


@pytest.mark.parametrize("command", COMMANDS)
def test_modules_run_as_commands_without_a_runtime_warning(command):
    # -W error turns runpy's "found in sys.modules ... prior to execution" into a failure
    done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", command, "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "usage:" in done.stdout


WITHOUT_TRAIN_EXTRA = ("import sys; sys.modules['mlxtend'] = None; sys.modules['matplotlib'] = None; "
                       "from engine.cli.train import main; raise SystemExit(main(sys.argv[1:]))")


def test_without_the_train_extra_the_embedded_digits_still_train_without_the_plot(tmp_path):
    done = subprocess.run([sys.executable, "-c", WITHOUT_TRAIN_EXTRA, "--out", str(tmp_path / "run"),
                           "--iters", "2", "--hidden", "4", "--workers", "1", "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "training.png not written" in done.stderr and "numgrad-engine[train]" in done.stderr
    assert "on 100 images" in done.stdout
    assert (tmp_path / "run" / "params.npz").exists() and not (tmp_path / "run" / "training.png").exists()


def test_without_the_train_extra_the_gradient_check_runs_on_the_embedded_digits():
    script = ("import sys; sys.modules['mlxtend'] = None; sys.modules['matplotlib'] = None; "
              "from engine.cli.gradcheck import main; "
              "raise SystemExit(main(['--sizes', '784', '4', '10', '--workers', '1']))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ok: every relative error" in done.stdout and "1 MNIST image(s)" in done.stdout


def test_without_the_train_extra_csv_files_still_train_without_the_plot(tmp_path):
    from engine.data._data import Dataset, write_mnist_csv

    rng = np.random.default_rng(0)
    data = Dataset(rng.random((20, 784)), np.arange(20) % 10)
    write_mnist_csv(tmp_path / "train.csv", data)
    done = subprocess.run([sys.executable, "-c", WITHOUT_TRAIN_EXTRA, "--out", str(tmp_path / "run"),
                           "--train-csv", str(tmp_path / "train.csv"), "--test-csv",
                           str(tmp_path / "train.csv"), "--iters", "3", "--hidden", "4",
                           "--workers", "1", "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "training.png not written" in done.stderr and "numgrad-engine[train]" in done.stderr
    assert (tmp_path / "run" / "params.npz").exists() and not (tmp_path / "run" / "training.png").exists()


def test_the_readme_layout_table_names_every_module_and_only_those():
    readme = (PACKAGE.parent / "README.md").read_text()
    table = readme[readme.index("| package | concern | modules |"):]
    table = table[:table.index("\n\n")]
    named = set(re.findall(r"`(engine/[\w/]+\.py)`", table))
    modules = {str(path.relative_to(PACKAGE.parent)) for path in PACKAGE.rglob("*.py")
               if path.name != "__init__.py" or path.parent == PACKAGE}
    assert named == modules, (f"missing from README's layout table: {sorted(modules - named)}; "
                              f"named but absent: {sorted(named - modules)}")
