"""The package's surface: its exports, and its modules run as commands without warnings."""
import importlib
import subprocess
import sys

import pytest

import engine

EXPORTS = {
    "numerical_gradient": "serial", "parallel_numerical_gradient": "parallel",
    "jacobian": "parallel", "Gradient": "gradient", "Jacobian": "gradient", "Plan": "gradient",
    "Failure": "gradient", "plan_chunks": "gradient", "Execution": "execution",
    "WorkerError": "errors", "NumericalFallbackWarning": "errors", "StepSizeWarning": "errors", "gradient_check": "gradcheck", "GradientDifference": "gradcheck",
    "SimpleNet": "nets", "ThreeLayerNet": "nets", "MLP": "nets", "Dataset": "data",
    "DataError": "data", "load_embedded_mnist": "data", "read_mnist_csv": "data",
    "write_mnist_csv": "data", "PayloadError": "errors", "StateNotShippedError": "errors",
    "WorkerLostError": "errors",
}


def test_every_export_is_its_modules_object():
    assert sorted(engine.__all__) == sorted(EXPORTS)
    for name, module in EXPORTS.items():
        assert getattr(engine, name) is getattr(importlib.import_module(f"engine.{module}"), name)
        assert name in dir(engine)
    namespace = {}
    exec("from engine import *", namespace)
    assert set(EXPORTS) <= set(namespace)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        engine.no_such_name


@pytest.mark.parametrize("command", [
    ["engine.data", "--help"], ["engine.gradcheck", "--help"], ["engine.train", "--help"],
])
def test_modules_run_as_commands_without_a_runtime_warning(command):
    # -W error turns runpy's "found in sys.modules ... prior to execution" into a failure
    done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", *command],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "usage:" in done.stdout
