"""The training order, pinned: the rule --shuffle documents, and a new order every epoch.

The rule (README, engine-train --help): one generator, ``rng = default_rng(seed)``,
draws the initial weights first (`init_params(sizes, std, seed=rng)`), then one
``rng.permutation(n_train)`` per epoch, epoch 0 first. Without --shuffle every epoch
takes the images in file order.
"""
import numpy as np
import pytest

from engine._data import load_embedded_mnist
from engine._model import init_params
from engine._training import TrainConfig, Trainer

N_TRAIN, BATCH, EPOCHS = 10, 5, 4


@pytest.fixture(scope="module")
def data():
    train, test = load_embedded_mnist()
    return train.head(N_TRAIN), test.head(2)


def run_recording_orders(data, **config):
    """Train EPOCHS epochs (backprop: only the order matters); each epoch's order, and the
    initial weights."""
    config = TrainConfig(sizes=(784, 3, 10), batch_size=BATCH, steps=EPOCHS * N_TRAIN // BATCH,
                         gradient="backprop", **config)
    trainer = Trainer(config, *data)   # backprop: no workers
    initial, orders = trainer.state.params, [trainer.state.order.copy()]

    def record(t):
        if t.state.position == 0:   # an epoch ended: the next one's order is drawn
            orders.append(t.state.order.copy())

    trainer.run(on_step=record)
    return initial, orders


@pytest.mark.parametrize("seed", [0, 7])
def test_shuffled_orders_follow_the_documented_rule(data, seed):
    initial, orders = run_recording_orders(data, shuffle=True, seed=seed)
    rng = np.random.default_rng(seed)
    expected_params = init_params((784, 3, 10), 0.01, seed=rng)      # drawn first
    expected = [rng.permutation(N_TRAIN) for _ in range(EPOCHS + 1)]  # then one per epoch
    for name, value in expected_params.items():
        assert np.array_equal(initial[name], value), name
    assert len(orders) == EPOCHS + 1
    for epoch, (got, want) in enumerate(zip(orders, expected)):
        assert np.array_equal(got, want), f"epoch {epoch}"


def test_successive_epochs_are_shuffled_differently(data):
    _, orders = run_recording_orders(data, shuffle=True, seed=3)
    for epoch in range(1, len(orders)):
        assert sorted(orders[epoch]) == list(range(N_TRAIN))
        assert not np.array_equal(orders[epoch], orders[epoch - 1]), f"epochs {epoch - 1}, {epoch}"


def test_without_shuffle_every_epoch_is_in_file_order(data):
    _, orders = run_recording_orders(data, shuffle=False, seed=3)
    assert len(orders) == EPOCHS + 1
    assert all(np.array_equal(order, np.arange(N_TRAIN)) for order in orders)


class TestBadConfigIsRefusedBeforeAnyWork:
    """TrainConfig and Trainer are public: a bad field is a ValueError naming it, at once."""

    @pytest.mark.parametrize("field, value", [
        ("lr", -0.1), ("lr", float("nan")), ("lr", True), ("weight_init_std", 0.0),
        ("batch_size", 0), ("batch_size", 2.0), ("steps", -1), ("seed", 1.5), ("eval_every", -2),
        ("shuffle", "yes"), ("gradient", "symbolic"), ("sizes", (784,)), ("sizes", (784, 0, 10)),
    ])
    def test_a_bad_field(self, field, value):
        with pytest.raises(ValueError, match=f"`{field}`"):
            TrainConfig(**{field: value})

    def test_sizes_given_as_a_list_are_kept_as_a_tuple(self):
        assert TrainConfig(sizes=[784, 5, 10]).sizes == (784, 5, 10)

    @pytest.mark.parametrize("config, match", [
        (TrainConfig(batch_size=N_TRAIN + 1, gradient="backprop"), "`batch_size` 11 is more than the 10"),
        (TrainConfig(sizes=(780, 10), gradient="backprop"), r"input width \(`sizes\[0\]`\) is 780"),
        (TrainConfig(sizes=(784, 5), gradient="backprop"), r"label 9, but the net has 5 outputs"),
    ])
    def test_data_that_does_not_fit_the_net(self, data, config, match):
        with pytest.raises(ValueError, match=match):
            Trainer(config, *data)
