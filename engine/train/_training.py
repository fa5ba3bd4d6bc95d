"""The SGD loop of the teaching text, on numerical (or backprop) gradients.

`Trainer` advances a `TrainingState` one step at a time. Each step builds a new
state and replaces the old one in a single assignment, so whatever interrupts the
loop (Ctrl-C, SIGTERM, an error in a worker) finds `trainer.state` at the end of the
last completed step: consistent, and safe to checkpoint. Results do not depend on the
number of workers: the engine's gradients are bit-identical to the serial ones.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from numbers import Real
from typing import Any, Callable

import numpy as np

from ..data._data import Dataset
from ..batched._detect import AUTO_EVALUATOR
from ..run._execution import Execution, check_positive_int
from ..derivatives._gradient import Gradient, Plan
from ..nn._layers import ACTIVATIONS
from ..nn._model import DEFAULT_ACTIVATION, DEFAULT_WEIGHT_STD, check_sizes
from ..book._convnet import SimpleConvNet
from ..book._nets import BOOK_SIZES, MLP, Net
from ..fd._schemes import AUTO, DEFAULT_SCHEME, DEFAULT_STEP

__all__ = ["TrainConfig", "TrainingState", "Trainer", "GRADIENTS", "NETS", "build_net"]

NUMERICAL, BACKPROP = "numerical", "backprop"
GRADIENTS = (NUMERICAL, BACKPROP)          # how a step's gradient is computed
NETS = ("mlp", "convnet")                  # the book's MLP (sigmoid) or its SimpleConvNet


def build_net(sizes: tuple[int, ...], net: str = NETS[0], weight_init_std: float = DEFAULT_WEIGHT_STD,
              seed: Any = None, activation: str = DEFAULT_ACTIVATION) -> Net:
    """The net a run trains, its weights drawn from ``default_rng(seed)``.

    ``"mlp"``: the MLP of widths `sizes` (`activation` between its affine layers).
    ``"convnet"``: the book's SimpleConvNet on square one-channel images of ``sizes[0]``
    pixels, hidden width ``sizes[1]``, ``sizes[2]`` classes (30 filters of 5x5, 2x2 max pooling).

    Raises
    ------
    ValueError
        If `net` is unknown, or `sizes` does not fit it (naming the field).
    """
    if net == "mlp":
        return MLP(sizes, activation, weight_init_std=weight_init_std, seed=seed)
    if net != "convnet":
        raise ValueError(f"`net` must be one of {NETS}, got {net!r}")
    side = int(round(np.sqrt(sizes[0])))
    if len(sizes) != 3 or side * side != sizes[0]:
        raise ValueError(f"`sizes` of the convnet must be (H*W, hidden, classes) for square images, "
                         f"got {sizes}")
    return SimpleConvNet(input_dim=(1, side, side), hidden_size=sizes[1], output_size=sizes[2],
                         weight_init_std=weight_init_std, seed=seed)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the numbers a run produces.

    The defaults are the teaching text's run, and the one source of engine-train's.
    `h`, `scheme` and `evaluator` are checked by the `engine.Gradient` a `Trainer` builds.

    Raises
    ------
    ValueError
        Naming the field: `sizes` not at least two positive ints; `lr` or
        `weight_init_std` not a positive finite number; `batch_size` not a positive int;
        `steps`, `seed` or `eval_every` not a non-negative int; `shuffle` not a bool;
        `gradient` not one of `GRADIENTS`; `activation` not one of ``sigmoid``, ``relu``,
        ``tanh``.
    """

    sizes: tuple[int, ...] = BOOK_SIZES
    weight_init_std: float = DEFAULT_WEIGHT_STD
    lr: float = 0.1
    batch_size: int = 1
    steps: int = 100
    h: float | str = DEFAULT_STEP   # or "auto"
    scheme: str = DEFAULT_SCHEME
    seed: int = 0
    shuffle: bool = False
    gradient: str = NUMERICAL
    evaluator: str = AUTO_EVALUATOR
    eval_every: int = 0          # steps between test evaluations; 0: each epoch's end only
    activation: str = DEFAULT_ACTIVATION   # between the affine layers of the MLP
    net: str = NETS[0]

    def __post_init__(self):
        object.__setattr__(self, "sizes", tuple(check_sizes(self.sizes)))
        for name in ("lr", "weight_init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")
        check_positive_int("batch_size", self.batch_size)
        for name in ("steps", "seed", "eval_every"):
            check_positive_int(name, getattr(self, name), zero_allowed=True)
        if not isinstance(self.shuffle, (bool, np.bool_)):
            raise ValueError(f"`shuffle` must be True or False, got {self.shuffle!r}")
        if self.gradient not in GRADIENTS:
            raise ValueError(f"`gradient` must be one of {GRADIENTS}, got {self.gradient!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {sorted(ACTIVATIONS)}, got "
                             f"{self.activation!r}")
        if self.net not in NETS:
            raise ValueError(f"`net` must be one of {NETS}, got {self.net!r}")
        if self.net != NETS[0]:
            build_net(self.sizes, self.net, 0.0)   # ValueError if `sizes` does not fit the net
        scale = 4.0 * float(self.weight_init_std)   # nearly every initial weight is below this
        if self.gradient != BACKPROP and self.h != AUTO and scale + float(self.h) == scale:
            raise ValueError(f"`h` = {self.h!r} is lost to rounding at weights of size {scale:g} "
                             f"(4 x `weight_init_std` = {self.weight_init_std!r}): nothing would be "
                             "perturbed. Use a larger `h`, or 'auto', or a smaller `weight_init_std`")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sizes": list(self.sizes)}


@dataclass(frozen=True)
class TrainingState:
    """Where a run stands after a completed step."""

    params: dict[str, np.ndarray]
    step: int
    epoch: int
    position: int                 # next sample's index into `order`
    order: np.ndarray             # this epoch's sample order, int64 (n_train,)
    rng_state: dict[str, Any]     # the generator's state after drawing `order`
    losses: tuple[float, ...] = ()
    seconds: tuple[float, ...] = ()
    # {"step", "epoch", "train_accuracy", "test_accuracy"}; checkpoints of earlier versions
    # hold no "train_accuracy"
    evaluations: tuple[dict, ...] = field(default=())

    def to_document(self) -> dict[str, Any]:
        """Everything but `params`, as a checkpoint stores it: ints, lists, dicts, `order`."""
        return {"step": self.step, "epoch": self.epoch, "position": self.position,
                "order": self.order, "rng_state": self.rng_state, "losses": list(self.losses),
                "seconds": list(self.seconds), "evaluations": list(self.evaluations)}

    @classmethod
    def from_document(cls, params: dict[str, np.ndarray], document: dict[str, Any],
                      sizes: tuple[int, ...], n_train: int, net: str = NETS[0]) -> TrainingState:
        """The state that `to_document` wrote, with its `params`, for the `net` of `sizes`.

        Raises
        ------
        ValueError
            If `params` are not the arrays of that net, or the sample order does not fit
            `n_train` training images; KeyError if `document` lacks a field.
        """
        expected = {name: array.shape for name, array in build_net(sizes, net, 0.0).params.items()}
        if {name: array.shape for name, array in params.items()} != expected:
            raise ValueError(f"holds parameters of other shapes than its "
                             f"{'-'.join(map(str, sizes))} net")
        order = np.asarray(document["order"], dtype=np.int64)
        if order.shape != (n_train,) or not 0 <= document["position"] <= n_train:
            raise ValueError(f"does not fit the {n_train} training images")
        return cls(params, document["step"], document["epoch"], document["position"], order,
                   document["rng_state"], tuple(document["losses"]), tuple(document["seconds"]),
                   tuple(document["evaluations"]))


class Trainer:
    """SGD on the net of `config`, over `train`, tested on `test`.

    Parameters
    ----------
    config : TrainConfig
    train, test : Dataset
    execution : Execution, optional
        Where the numerical gradient runs (workers, backend...): the speed, never the
        numbers. The trainer keeps one `engine.Gradient` for the whole run (``f`` the
        model's loss, the mini-batch its arguments); `close` releases its workers.
    state : TrainingState, optional
        Resume from here instead of a fresh initialisation.
    """

    def __init__(self, config: TrainConfig, train: Dataset, test: Dataset, *,
                 execution: Execution | None = None, state: TrainingState | None = None):
        _check_data(config, train, "train")
        _check_data(config, test, "test")
        if config.batch_size > len(train):
            raise ValueError(f"`batch_size` {config.batch_size} is more than the {len(train)} "
                             "training images")
        self.config, self.train, self.test = config, train, test
        # the structure; its params are the state's
        self.net = Net(build_net(config.sizes, config.net, 0.0, activation=config.activation).model, {})
        self.gradient = None
        if config.gradient != BACKPROP:
            self.gradient = Gradient(self.net.model.loss, h=config.h, scheme=config.scheme,
                                     evaluator=config.evaluator, execution=execution)
        self.state = state if state is not None else self._initial_state()

    def close(self) -> None:
        """Release the gradient's workers."""
        if self.gradient is not None:
            self.gradient.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def calibrate(self) -> Plan | None:
        """Decide where the gradient runs, on the next batch (the state does not move)."""
        if self.gradient is None:
            return None
        x, t = self._batch(self.state)
        return self.gradient.calibrate(self.state.params, x, t)

    @property
    def done(self) -> bool:
        return self.state.step >= self.config.steps

    def run(self, on_step: Callable[["Trainer"], None] | None = None) -> TrainingState:
        """Step until `config.steps`; call ``on_step(self)`` after each step."""
        while not self.done:
            self.state = self._next_state(self.state)
            if on_step is not None:
                on_step(self)
        return self.state

    def accuracy(self, data: Dataset, params: dict[str, np.ndarray] | None = None) -> float:
        """Fraction of `data` classified correctly with `params` (default: current)."""
        self.net.params = self.state.params if params is None else params
        return self.net.accuracy(data.images, data.labels)

    def _initial_state(self) -> TrainingState:
        """The order rule: ``rng = default_rng(seed)`` draws the weights first, then (with
        `shuffle`) the first epoch's permutation; each later epoch draws the next
        permutation from the same generator (`_next_order`). Without `shuffle`, file order."""
        c = self.config
        rng = np.random.default_rng(c.seed)
        params = build_net(c.sizes, c.net, c.weight_init_std, seed=rng, activation=c.activation).params
        order = rng.permutation(len(self.train)) if c.shuffle else np.arange(len(self.train))
        return TrainingState(params, 0, 0, 0, order.astype(np.int64), rng.bit_generator.state)

    def _next_state(self, state: TrainingState) -> TrainingState:
        c = self.config
        started = time.perf_counter()
        x, t = self._batch(state)
        loss, grads = self._loss_and_gradient(state.params, x, t)
        params = {name: p - c.lr * grads[name] for name, p in state.params.items()}
        position, epoch, order, rng_state = state.position + len(x), state.epoch, state.order, state.rng_state
        if position >= len(self.train):
            position, epoch = 0, epoch + 1
            order, rng_state = self._next_order(order, rng_state)
        step = state.step + 1
        evaluations = state.evaluations
        if self._evaluates_after(step, epoch != state.epoch):
            evaluations += ({"step": step, "epoch": epoch,
                             "train_accuracy": self.accuracy(self.train, params),
                             "test_accuracy": self.accuracy(self.test, params)},)
        return replace(state, params=params, step=step, epoch=epoch, position=position,
                       order=order, rng_state=rng_state, losses=state.losses + (loss,),
                       seconds=state.seconds + (time.perf_counter() - started,),
                       evaluations=evaluations)

    def _batch(self, state: TrainingState):
        batch = state.order[state.position: state.position + self.config.batch_size]
        return self.train.images[batch], self.train.labels[batch]

    def _loss_and_gradient(self, params, x, t):
        if self.gradient is not None:
            return self.gradient.value_and_grad(params, x, t)
        self.net.params = params
        return self.net.loss(x, t), self.net.gradient(x, t)

    def _next_order(self, order, rng_state):
        if not self.config.shuffle:
            return order, rng_state
        rng = np.random.default_rng()
        rng.bit_generator.state = rng_state
        return rng.permutation(len(self.train)).astype(np.int64), rng.bit_generator.state

    def _evaluates_after(self, step: int, epoch_ended: bool) -> bool:
        every = self.config.eval_every
        return epoch_ended or step == self.config.steps or (every > 0 and step % every == 0)


def _check_data(config: TrainConfig, data: Dataset, name: str) -> None:
    """ValueError unless `data` fits the net of `config`: the input width and the classes."""
    if not isinstance(data, Dataset):
        raise TypeError(f"`{name}` must be an engine.Dataset, got {type(data).__name__}")
    if len(data) == 0:   # an empty test set would make every accuracy NaN
        raise ValueError(f"`{name}` holds no images")
    n_in, n_classes = config.sizes[0], config.sizes[-1]
    if data.images.shape[1] != n_in:
        raise ValueError(f"`{name}` images have {data.images.shape[1]} values each, but the net's "
                         f"input width (`sizes[0]`) is {n_in}")
    if int(data.labels.max()) >= n_classes:
        raise ValueError(f"`{name}` has label {int(data.labels.max())}, but the net has "
                         f"{n_classes} outputs (`sizes[-1]`)")
