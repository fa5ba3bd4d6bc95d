"""The training order, pinned: the rule --shuffle documents, and a new order every epoch.

The rule (README, engine-train --help): one generator, ``rng = default_rng(seed)``,
draws the initial weights first (`init_params(sizes, std, seed=rng)`), then one
``rng.permutation(n_train)`` per epoch, epoch 0 first. Without --shuffle every epoch
takes the images in file order.
"""
import dataclasses

import numpy as np
import pytest

from engine.data._data import Dataset, load_embedded_mnist
from engine.nn._model import init_params
from engine.train._training import TrainConfig, Trainer, TrainingState

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

    @pytest.mark.parametrize("field, value, message", [
        ("lr", -0.1, "`lr` must be a positive finite number, got -0.1"),
        ("lr", 0, "`lr` must be a positive finite number, got 0"),
        ("lr", float("inf"), "`lr` must be a positive finite number, got inf"),
        ("lr", "0.1", "`lr` must be a positive finite number, got '0.1'"),
        ("lr", None, "`lr` must be a positive finite number, got None"),
        ("lr", np.True_, "`lr` must be a positive finite number, got np.True_"),
        ("weight_init_std", float("-inf"), "`weight_init_std` must be a positive finite number, got -inf"),
        ("batch_size", 0, "`batch_size` must be a positive int, got 0"),
        ("steps", 1.0, "`steps` must be a non-negative int, got 1.0"),
        ("seed", -1, "`seed` must be a non-negative int, got -1"),
        ("eval_every", True, "`eval_every` must be a non-negative int, got True"),
        ("shuffle", 1, "`shuffle` must be True or False, got 1"),
        ("gradient", "Backprop", "`gradient` must be one of ('numerical', 'backprop'), got 'Backprop'"),
        ("sizes", (784, 10.0), "`sizes` must hold positive ints, got 10.0 in [784, 10.0]"),
    ], ids=["lr-negative", "lr-0", "lr-inf", "lr-str", "lr-None", "lr-np.True_", "std--inf",
            "batch_size-0", "steps-float", "seed-negative", "eval_every-True", "shuffle-int",
            "gradient-case", "sizes-float"])
    def test_the_message_names_the_field_and_the_value(self, field, value, message):
        with pytest.raises(ValueError) as caught:
            TrainConfig(**{field: value})
        assert str(caught.value) == message

    def test_the_defaults_are_engine_trains_documented_ones(self):
        c = TrainConfig()
        assert (c.sizes, c.weight_init_std, c.lr, c.batch_size, c.steps, c.h, c.scheme, c.seed,
                c.shuffle, c.gradient, c.evaluator, c.eval_every) == (
            (784, 100, 10), 0.01, 0.1, 1, 100, 1e-4, "central", 0, False, "numerical", "auto", 0)

    def test_good_values_at_the_edges_are_kept(self):
        c = TrainConfig(sizes=(np.int64(3), 1), lr=2, weight_init_std=np.float32(1e-30), steps=0,
                        seed=np.int64(5), eval_every=0, shuffle=np.True_, gradient="backprop")
        assert c.sizes == (3, 1) and type(c.sizes[0]) is int
        assert (c.lr, c.weight_init_std, c.steps, c.seed, c.shuffle) == (2, np.float32(1e-30), 0, 5, True)

    def test_sizes_given_as_a_list_are_kept_as_a_tuple(self):
        assert TrainConfig(sizes=[784, 5, 10]).sizes == (784, 5, 10)

    def test_a_config_is_frozen_and_its_dict_lists_the_sizes(self):
        c = TrainConfig(sizes=(784, 5, 10), lr=0.5)
        with pytest.raises(dataclasses.FrozenInstanceError):
            c.lr = 1.0
        d = c.to_dict()
        assert d["sizes"] == [784, 5, 10] and d["lr"] == 0.5 and d["gradient"] == "numerical"
        assert TrainConfig(**d) == c

    @pytest.mark.parametrize("config, match", [
        (TrainConfig(batch_size=N_TRAIN + 1, gradient="backprop"), "`batch_size` 11 is more than the 10"),
        (TrainConfig(sizes=(780, 10), gradient="backprop"), r"input width \(`sizes\[0\]`\) is 780"),
        (TrainConfig(sizes=(784, 5), gradient="backprop"), r"label 9, but the net has 5 outputs"),
    ], ids=["batch-larger-than-the-set", "input-width", "label-beyond-the-outputs"])
    def test_data_that_does_not_fit_the_net(self, data, config, match):
        with pytest.raises(ValueError, match=match):
            Trainer(config, *data)

    def test_the_messages_name_the_dataset_and_both_numbers(self, data):
        train, test = data
        narrow = Dataset(test.images[:, :780].copy(), test.labels)
        with pytest.raises(ValueError) as caught:
            Trainer(TrainConfig(gradient="backprop"), train, narrow)
        assert str(caught.value) == ("`test` images have 780 values each, but the net's input "
                                     "width (`sizes[0]`) is 784")
        top = int(train.labels.max())   # 9: a net of exactly 9 outputs has no class 9
        with pytest.raises(ValueError) as caught:
            Trainer(TrainConfig(sizes=(784, 3, top), gradient="backprop"), train, test)
        assert str(caught.value) == f"`train` has label {top}, but the net has {top} outputs (`sizes[-1]`)"

    @pytest.mark.parametrize("which", ["train", "test"])
    def test_an_empty_data_set_is_refused(self, data, which):
        given = dict(zip(("train", "test"), data))
        given[which] = given[which].head(0)
        with pytest.raises(ValueError) as caught:
            Trainer(TrainConfig(gradient="backprop"), given["train"], given["test"])
        assert str(caught.value) == f"`{which}` holds no images"

    def test_labels_below_the_outputs_and_a_whole_batch_are_accepted(self, data):
        train, test = data
        top = int(max(train.labels.max(), test.labels.max()))
        config = TrainConfig(sizes=(784, 3, top + 1), batch_size=len(train), steps=1, gradient="backprop")
        trainer = Trainer(config, train, test)
        assert trainer.state.step == 0 and trainer.gradient is None
        trainer.run()
        assert (trainer.state.step, trainer.state.epoch, trainer.state.position) == (1, 1, 0)

    @pytest.mark.parametrize("which", ["train", "test"])
    def test_data_must_be_a_dataset(self, data, which):
        given = dict(zip(("train", "test"), data))
        given[which] = (given[which].images, given[which].labels)
        with pytest.raises(TypeError) as caught:
            Trainer(TrainConfig(gradient="backprop"), given["train"], given["test"])
        assert str(caught.value) == f"`{which}` must be an engine.Dataset, got tuple"


class TestTheCheckpointDocument:
    """A TrainingState round-trips through the document a checkpoint stores, and a document
    that does not fit the net or the data is refused, naming why."""

    def state(self, data):
        config = TrainConfig(sizes=(784, 3, 10), batch_size=BATCH, steps=3, gradient="backprop")
        trainer = Trainer(config, *data)
        trainer.run()
        return config, trainer.state

    def test_round_trip_is_exact(self, data):
        config, state = self.state(data)
        document = state.to_document()
        back = TrainingState.from_document(state.params, document, config.sizes, N_TRAIN)
        assert (back.step, back.epoch, back.position) == (state.step, state.epoch, state.position)
        assert np.array_equal(back.order, state.order) and back.order.dtype == np.int64
        assert back.rng_state == state.rng_state and back.losses == state.losses
        assert back.seconds == state.seconds and back.evaluations == state.evaluations
        assert back.params is state.params

    def test_parameters_of_another_net_are_refused(self, data):
        config, state = self.state(data)
        with pytest.raises(ValueError, match="other shapes than its 784-4-10 net"):
            TrainingState.from_document(state.params, state.to_document(), (784, 4, 10), N_TRAIN)

    @pytest.mark.parametrize("change", ["order-length", "position-past-the-end"])
    def test_an_order_that_does_not_fit_the_data_is_refused(self, data, change):
        config, state = self.state(data)
        document = state.to_document()
        if change == "order-length":
            document["order"] = document["order"][:-1]
        else:
            document["position"] = N_TRAIN + 1
        with pytest.raises(ValueError, match=f"does not fit the {N_TRAIN} training images"):
            TrainingState.from_document(state.params, document, config.sizes, N_TRAIN)

    def test_a_missing_field_is_a_key_error(self, data):
        config, state = self.state(data)
        document = state.to_document()
        del document["rng_state"]
        with pytest.raises(KeyError, match="rng_state"):
            TrainingState.from_document(state.params, document, config.sizes, N_TRAIN)
