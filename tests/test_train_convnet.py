"""Training the book's SimpleConvNet: the config names its sizes, the trainer's numbers do not
depend on the workers, numerical and backprop runs agree, a checkpoint resumes it, and
engine-train's --net flag is checked before anything is written.

Images here are 8x8 (64 pixels, made up), so a step of the 30-filter net takes milliseconds.
"""
import numpy as np
import pytest

from engine.cli.train import build_parser, main
from engine.data._data import Dataset
from engine.run._execution import Execution
from engine.train._training import TrainConfig, Trainer, TrainingState, build_net

SIZES = (64, 6, 10)


@pytest.fixture
def data():
    rng = np.random.default_rng(5)
    def make(n):
        return Dataset(rng.random((n, 64)), rng.integers(0, 10, n).astype(np.int64))
    return make(6), make(4)


def run(config, data, workers=1):
    with Trainer(config, *data, execution=Execution(workers=workers, dispatch="parallel"
                                                    if workers > 1 else "auto")) as trainer:
        return trainer.run()


def test_the_config_checks_the_sizes_and_the_net():
    assert TrainConfig(sizes=SIZES, net="convnet").net == "convnet"
    with pytest.raises(ValueError, match=r"`sizes` of the convnet must be \(H\*W, hidden, classes\)"):
        TrainConfig(sizes=(60, 6, 10), net="convnet")
    with pytest.raises(ValueError, match=r"`sizes` of the convnet"):
        TrainConfig(sizes=(64, 6, 5, 10), net="convnet")
    with pytest.raises(ValueError, match="`net` must be one of"):
        TrainConfig(net="resnet")


def test_two_workers_train_to_the_same_bits_and_backprop_agrees(data):
    config = TrainConfig(sizes=SIZES, net="convnet", steps=3, weight_init_std=0.1)
    one, two = run(config, data), run(config, data, workers=2)
    assert all(np.array_equal(one.params[k], two.params[k]) for k in one.params)
    assert one.losses == two.losses
    exact = run(TrainConfig(sizes=SIZES, net="convnet", steps=3, weight_init_std=0.1,
                            gradient="backprop"), data)
    assert exact.losses[0] == one.losses[0]   # the same start
    np.testing.assert_allclose(one.losses, exact.losses, rtol=1e-8)


def test_a_checkpoint_of_the_convnet_resumes(data):
    config = TrainConfig(sizes=SIZES, net="convnet", steps=2, gradient="backprop")
    state = run(config, data)
    again = TrainingState.from_document(state.params, state.to_document(), SIZES, 6, "convnet")
    assert again.params is state.params and again.step == 2
    with pytest.raises(ValueError, match="other shapes"):
        TrainingState.from_document(state.params, state.to_document(), SIZES, 6, "mlp")


def test_build_net_draws_from_the_generator_it_is_given():
    a = build_net(SIZES, "convnet", 0.01, seed=np.random.default_rng(3)).params
    b = build_net(SIZES, "convnet", 0.01, seed=3).params
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_engine_train_documents_and_checks_net(tmp_path, capsys):
    assert "--net {mlp,convnet}" in build_parser().format_help()
    out = tmp_path / "never"
    assert main(["--net", "convnet", "--hidden", "10", "5", "--out", str(out), "--no-progress"]) == 2
    assert "--net convnet has one hidden layer" in capsys.readouterr().err
    assert not out.exists()
