"""The trainer's SGD loop, in process on a tiny net: each step is ``p - lr * grad`` of the
next mini-batch, the position, epoch and evaluations advance by the documented rule, and
the trainer's own resources (its `engine.Gradient`) are released by `close`.

A 4-3-3 MLP on six made-up images keeps every step to milliseconds; the references are
computed independently (an `engine.Gradient` of the same loss, the net's backprop), so the
trainer's numbers are compared with exact equality where the engine claims identity.
"""
import dataclasses
import time

import numpy as np
import pytest

from engine import Execution, Gradient
from engine.data._data import Dataset
from engine.derivatives._gradient import Plan
from engine.train._training import TrainConfig, Trainer, TrainingState, build_net

SIZES, N_TRAIN, BATCH = (4, 3, 3), 6, 2
SERIAL = Execution(workers=1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    train = Dataset(rng.random((N_TRAIN, SIZES[0])), np.array([0, 1, 2, 0, 1, 2], np.int64))
    test = Dataset(rng.random((3, SIZES[0])), np.array([2, 0, 1], np.int64))
    return train, test


def config(**fields):
    given = dict(sizes=SIZES, batch_size=BATCH, steps=4, lr=0.5, weight_init_std=0.5)
    return TrainConfig(**{**given, **fields})


def trainer_for(data, **fields):
    return Trainer(config(**fields), *data, execution=SERIAL)


def reference_step(cfg, params, x, t):
    """The loss and the parameters after one SGD step, computed without the trainer."""
    net = build_net(cfg.sizes, weight_init_std=0.0)
    if cfg.gradient == "backprop":
        net.params = params
        loss, grads = net.loss(x, t), net.gradient(x, t)
    else:
        with Gradient(net.model.loss, h=cfg.h, scheme=cfg.scheme, workers=1) as g:
            loss, grads = g.value_and_grad(params, x, t)
    return loss, {name: p - cfg.lr * grads[name] for name, p in params.items()}


@pytest.mark.parametrize("gradient", ["numerical", "backprop"])
def test_each_step_is_sgd_on_the_next_mini_batch(data, gradient):
    train, _ = data
    with trainer_for(data, gradient=gradient, shuffle=True, seed=2) as trainer:
        states = [trainer.state]
        trainer.run(on_step=lambda t: states.append(t.state))
    assert len(states) == trainer.config.steps + 1
    for before, after in zip(states, states[1:]):
        batch = before.order[before.position: before.position + BATCH]
        loss, params = reference_step(trainer.config, before.params, train.images[batch],
                                      train.labels[batch])
        assert after.losses == before.losses + (loss,)
        for name, value in params.items():
            assert np.array_equal(after.params[name], value), name


def test_a_numerical_run_is_not_the_backprop_run(data):
    with trainer_for(data, steps=1) as numerical, trainer_for(data, steps=1, gradient="backprop") as exact:
        assert numerical.gradient is not None and exact.gradient is None
        numerical.run()
        exact.run()
        a, b = numerical.state.params, exact.state.params
        assert not all(np.array_equal(a[name], b[name]) for name in a)
        assert all(np.allclose(a[name], b[name], rtol=0, atol=1e-6) for name in a)


def test_the_initial_state_is_step_0_of_epoch_0_at_the_first_image(data):
    state = trainer_for(data, gradient="backprop").state
    assert (state.step, state.epoch, state.position) == (0, 0, 0)
    assert state.losses == state.seconds == state.evaluations == ()
    assert np.array_equal(state.order, np.arange(N_TRAIN)) and state.order.dtype == np.int64


def test_a_state_is_never_changed_in_place(data):
    """Each step builds a new state, so an interrupted loop finds the last completed one."""
    trainer = trainer_for(data, gradient="backprop", steps=1)
    first = trainer.state
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.step = 1
    assert trainer.run() is not first and first.step == 0


def test_position_and_epoch_advance_by_one_batch_and_wrap_at_the_end(data):
    trainer = trainer_for(data, gradient="backprop", steps=7)
    seen = []
    trainer.run(on_step=lambda t: seen.append((t.state.step, t.state.epoch, t.state.position)))
    # 6 images, batches of 2: an epoch is 3 steps, the last one lands exactly on the end
    assert seen == [(1, 0, 2), (2, 0, 4), (3, 1, 0), (4, 1, 2), (5, 1, 4), (6, 2, 0), (7, 2, 2)]


def test_run_steps_exactly_to_steps_calls_on_step_each_time_and_returns_the_state(data):
    trainer = trainer_for(data, gradient="backprop", steps=5)
    calls = []
    final = trainer.run(on_step=calls.append)
    assert calls == [trainer] * 5
    assert final is trainer.state and final.step == 5 and len(final.losses) == 5 and trainer.done
    assert trainer.run() is final   # done: no step more


def test_a_run_of_0_steps_takes_none(data):
    trainer = trainer_for(data, gradient="backprop", steps=0)
    assert trainer.done
    assert trainer.run(on_step=pytest.fail).step == 0


def test_resuming_from_a_state_continues_the_same_run(data):
    whole = trainer_for(data, shuffle=True, steps=5).run()
    first = trainer_for(data, shuffle=True, steps=2).run()
    resumed = Trainer(config(shuffle=True, steps=5), *data, execution=SERIAL, state=first)
    assert resumed.state is first
    rest = resumed.run()
    assert (rest.step, rest.epoch, rest.position) == (whole.step, whole.epoch, whole.position)
    assert rest.losses == whole.losses and np.array_equal(rest.order, whole.order)
    for name in whole.params:
        assert np.array_equal(rest.params[name], whole.params[name]), name


def test_each_step_records_its_own_seconds(data):
    trainer = trainer_for(data, steps=3)
    started = time.perf_counter()
    state = trainer.run()
    elapsed = time.perf_counter() - started
    assert len(state.seconds) == 3
    assert all(0 <= s for s in state.seconds) and sum(state.seconds) <= elapsed


@pytest.mark.parametrize("steps, every, expected", [
    (7, 0, [(3, 1), (6, 2), (7, 2)]),            # each epoch's end, and the last step
    (6, 0, [(3, 1), (6, 2)]),                    # the last step ends an epoch: once
    (7, 2, [(2, 0), (3, 1), (4, 1), (6, 2), (7, 2)]),
    (4, 1, [(1, 0), (2, 0), (3, 1), (4, 1)]),
    (2, 5, [(2, 0)]),
], ids=["epochs", "last-ends-an-epoch", "every-2", "every-1", "every-past-the-end"])
def test_evaluations_follow_the_schedule_with_the_new_weights(data, steps, every, expected):
    trainer = trainer_for(data, gradient="backprop", steps=steps, eval_every=every, lr=5.0)
    after = {}
    trainer.run(on_step=lambda t: after.update({t.state.step: t.state.params}))
    evaluations = trainer.state.evaluations
    assert [(e["step"], e["epoch"]) for e in evaluations] == expected
    train, test = data
    for e in evaluations:
        assert e["train_accuracy"] == trainer.accuracy(train, after[e["step"]])
        assert e["test_accuracy"] == trainer.accuracy(test, after[e["step"]])


def always(label, sizes=SIZES):
    """Parameters whose net predicts `label` for every image."""
    params = {name: np.zeros_like(p) for name, p in build_net(sizes, weight_init_std=0.0).params.items()}
    params["b2"][label] = 1.0
    return params


def test_accuracy_uses_the_params_given_else_the_current_ones(data):
    train, _ = data    # two images of each class 0, 1, 2
    trainer = trainer_for(data, gradient="backprop")
    trainer.state = TrainingState(always(0), 0, 0, 0, np.arange(N_TRAIN), {})
    assert trainer.accuracy(train) == pytest.approx(1 / 3)
    only_zeros = Dataset(train.images[:1], train.labels[:1])
    assert trainer.accuracy(only_zeros, always(1)) == 0.0
    assert trainer.accuracy(only_zeros) == 1.0


def test_close_and_the_with_block_release_the_gradient(data):
    with trainer_for(data) as trainer:
        assert isinstance(trainer, Trainer)
        gradient = trainer.gradient
        trainer.run()
    with pytest.raises(ValueError, match="is closed"):
        gradient(trainer.state.params, data[0].images[:1], data[0].labels[:1])
    other = trainer_for(data)
    other.close()
    with pytest.raises(ValueError, match="is closed"):
        other.run()
    trainer_for(data, gradient="backprop").close()   # nothing to release: no error


def test_calibrate_plans_the_gradient_without_moving_the_state(data):
    trainer = trainer_for(data)
    try:
        before = trainer.state
        plan = trainer.calibrate()
        assert isinstance(plan, Plan) and plan.where == "in-process"
        assert trainer.state is before
    finally:
        trainer.close()
    assert trainer_for(data, gradient="backprop").calibrate() is None


@pytest.mark.parametrize("net, sizes", [("mlp", (4, 3, 3)), ("convnet", (64, 5, 3))])
def test_build_net_builds_the_named_net_of_sizes(net, sizes):
    built = build_net(sizes, net, 0.1, seed=0)
    x = np.random.default_rng(0).random((2, sizes[0]))
    assert built.predict(x).shape == (2, sizes[-1])
    if net == "convnet":
        assert built.params["w1"].shape == (30, 1, 5, 5)   # 30 filters of 5x5 on one channel
        assert built.params["w2"].shape == (30 * 2 * 2, sizes[1])   # 8x8 -> 4x4 -> pooled 2x2


@pytest.mark.parametrize("sizes", [(60, 5, 3), (64, 5, 4, 3), (64, 3)])
def test_build_net_refuses_sizes_that_do_not_fit_the_convnet(sizes):
    with pytest.raises(ValueError, match="`sizes` of the convnet must be"):
        build_net(sizes, "convnet")


def test_build_net_refuses_an_unknown_net():
    with pytest.raises(ValueError, match="`net` must be one of"):
        build_net(SIZES, "resnet")


def test_a_convnet_config_checks_its_sizes_at_once():
    assert TrainConfig(sizes=(64, 5, 3), net="convnet").net == "convnet"
    with pytest.raises(ValueError, match="`sizes` of the convnet must be"):
        TrainConfig(sizes=(60, 5, 3), net="convnet")


@pytest.mark.parametrize("field, value, match", [
    ("activation", "softplus", "`activation` must be one of"),
    ("net", "resnet", "`net` must be one of"),
], ids=["activation", "net"])
def test_an_unknown_activation_or_net_is_refused(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value})


def test_a_step_lost_to_rounding_at_4_times_the_weight_scale_is_refused():
    with pytest.raises(ValueError, match=r"`h` = 0.0001 is lost to rounding at weights of size 4e\+13"):
        TrainConfig(weight_init_std=1e13, h=1e-4)
    # 4 x std = 0.99 * 2**40 still moves by 1e-4 (5 x std would not): accepted
    assert TrainConfig(weight_init_std=0.99 * 2 ** 38, h=1e-4).h == 1e-4
    # nothing is perturbed by backprop, and h='auto' scales with the weights
    TrainConfig(weight_init_std=1e13, h=1e-4, gradient="backprop")
    TrainConfig(weight_init_std=1e13, h="auto")


def test_an_mlp_of_any_depth_is_not_checked_as_a_convnet():
    assert TrainConfig(sizes=(5, 4, 3, 2)).sizes == (5, 4, 3, 2)


def test_a_step_lost_upward_at_a_power_of_two_is_refused():
    # 4 x std = 2**40: + 1e-4 rounds back to 2**40 (- 1e-4 would not, the spacing below is half)
    with pytest.raises(ValueError, match="is lost to rounding"):
        TrainConfig(weight_init_std=2.0 ** 38, h=1e-4)


@pytest.mark.parametrize("position", [0, N_TRAIN])
def test_a_document_at_either_end_of_the_order_is_taken(data, position):
    state = trainer_for(data, gradient="backprop").state
    document = {**state.to_document(), "position": position}
    back = TrainingState.from_document(state.params, document, SIZES, N_TRAIN)
    assert back.position == position
