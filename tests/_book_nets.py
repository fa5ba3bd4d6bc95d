"""The book's chapter 5-7 nets and gradient-check scripts, written here in its style and API.

Numpy only, no engine: ``TwoLayerNet`` (ch05), ``MultiLayerNetExtend`` (ch06, batch
normalization and dropout), ``SimpleConvNet`` (ch07), their layers (``Affine``, ``Relu``,
``SoftmaxWithLoss``, ``BatchNormalization``, ``Dropout``, ``Convolution``, ``Pooling``)
and ``im2col`` / ``col2im``. As in the book, each net's ``numerical_gradient(x, t)``
calls this module's ``numerical_gradient(f, W)`` with ``f = lambda W: self.loss(x, t)``:
a test swaps that name for the engine's function, as a reader would edit one import.
The layers hold the very arrays of ``params``, so a perturbation in place reaches them.

The ``*_gradient_check`` functions are the three scripts: they build the net, print
``key:mean |num - backprop|`` per array as the book does, and return both gradients.
"""
from collections import OrderedDict

import numpy as np

from book_reference import book_numerical_gradient as numerical_gradient

__all__ = ["TwoLayerNet", "MultiLayerNetExtend", "SimpleConvNet", "numerical_gradient",
           "ch05_gradient_check", "ch06_batch_norm_gradient_check", "ch07_gradient_check"]

BN_EPS = 10e-7   # the book's constant inside the square root


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def cross_entropy_error(y, t):
    if y.ndim == 1:
        y, t = y.reshape(1, -1), t.reshape(1, -1)
    if t.size == y.size:   # one-hot rows: their class
        t = t.argmax(axis=1)
    batch_size = y.shape[0]
    return -np.sum(np.log(y[np.arange(batch_size), t.reshape(batch_size)] + 1e-7)) / batch_size


# ---------------------------------------------------------------- layers


class Relu:
    def __init__(self):
        self.mask = None

    def forward(self, x):
        self.mask = x <= 0
        out = x.copy()
        out[self.mask] = 0
        return out

    def backward(self, dout):
        dx = dout.copy()
        dx[self.mask] = 0
        return dx


class Affine:
    def __init__(self, W, b):
        self.W, self.b = W, b
        self.x = self.original_x_shape = None
        self.dW = self.db = None

    def forward(self, x):
        self.original_x_shape = x.shape
        self.x = x.reshape(x.shape[0], -1)   # images become rows
        return self.x @ self.W + self.b

    def backward(self, dout):
        self.dW = self.x.T @ dout
        self.db = dout.sum(axis=0)
        return (dout @ self.W.T).reshape(self.original_x_shape)


class SoftmaxWithLoss:
    def __init__(self):
        self.loss = self.y = self.t = None

    def forward(self, x, t):
        self.t, self.y = t, softmax(x)
        self.loss = cross_entropy_error(self.y, t)
        return self.loss

    def backward(self, dout=1):
        batch_size = self.y.shape[0]
        if self.t.size == self.y.size:   # one-hot
            return (self.y - self.t) * dout / batch_size
        dx = self.y.copy()
        dx[np.arange(batch_size), self.t.reshape(batch_size)] -= 1
        return dx * dout / batch_size


class BatchNormalization:
    """Normalises each feature over the batch; running statistics for inference."""

    def __init__(self, gamma, beta, momentum=0.9, running_mean=None, running_var=None):
        self.gamma, self.beta, self.momentum = gamma, beta, momentum
        self.running_mean, self.running_var = running_mean, running_var
        self.input_shape = self.batch_size = self.xc = self.xn = self.std = None
        self.dgamma = self.dbeta = None

    def forward(self, x, train_flg=True):
        self.input_shape = x.shape
        out = self._forward(x.reshape(x.shape[0], -1), train_flg)
        return out.reshape(self.input_shape)

    def _forward(self, x, train_flg):
        if self.running_mean is None:
            self.running_mean = np.zeros(x.shape[1])
            self.running_var = np.zeros(x.shape[1])
        if train_flg:
            mu = x.mean(axis=0)
            xc = x - mu
            var = np.mean(xc ** 2, axis=0)
            std = np.sqrt(var + BN_EPS)
            xn = xc / std
            self.batch_size, self.xc, self.xn, self.std = x.shape[0], xc, xn, std
            # new arrays each step, as the book writes it: the state a loss call changes
            self.running_mean = self.momentum * self.running_mean + (1 - self.momentum) * mu
            self.running_var = self.momentum * self.running_var + (1 - self.momentum) * var
        else:
            xn = (x - self.running_mean) / np.sqrt(self.running_var + BN_EPS)
        return self.gamma * xn + self.beta

    def backward(self, dout):
        dout = dout.reshape(dout.shape[0], -1)
        self.dbeta = dout.sum(axis=0)
        self.dgamma = np.sum(self.xn * dout, axis=0)
        dxn = self.gamma * dout
        dxc = dxn / self.std
        dstd = -np.sum(dxn * self.xc / (self.std * self.std), axis=0)
        dvar = 0.5 * dstd / self.std
        dxc += (2.0 / self.batch_size) * self.xc * dvar
        dmu = np.sum(dxc, axis=0)
        return (dxc - dmu / self.batch_size).reshape(self.input_shape)


class Dropout:
    """The book's dropout: a fresh np.random mask on every training-mode forward."""

    def __init__(self, dropout_ratio=0.5):
        self.dropout_ratio = dropout_ratio
        self.mask = None

    def forward(self, x, train_flg=True):
        if train_flg:
            self.mask = np.random.rand(*x.shape) > self.dropout_ratio
            return x * self.mask
        return x * (1.0 - self.dropout_ratio)

    def backward(self, dout):
        return dout * self.mask


def _out_size(size, filter_size, stride, pad):
    return (size + 2 * pad - filter_size) // stride + 1


def im2col(input_data, filter_h, filter_w, stride=1, pad=0):
    """Images (N, C, H, W) -> rows (N*out_h*out_w, C*filter_h*filter_w), one per window."""
    N, C, H, W = input_data.shape
    out_h, out_w = _out_size(H, filter_h, stride, pad), _out_size(W, filter_w, stride, pad)
    img = np.pad(input_data, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    col = np.empty((N, out_h, out_w, C, filter_h, filter_w))
    for dy in range(filter_h):
        for dx in range(filter_w):
            window = img[:, :, dy:dy + stride * out_h:stride, dx:dx + stride * out_w:stride]
            col[:, :, :, :, dy, dx] = window.transpose(0, 2, 3, 1)
    return col.reshape(N * out_h * out_w, -1)


def col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    """The adjoint of `im2col`: each row's entries added back where they came from."""
    N, C, H, W = input_shape
    out_h, out_w = _out_size(H, filter_h, stride, pad), _out_size(W, filter_w, stride, pad)
    col = col.reshape(N, out_h, out_w, C, filter_h, filter_w)
    img = np.zeros((N, C, H + 2 * pad + stride - 1, W + 2 * pad + stride - 1))
    for dy in range(filter_h):
        for dx in range(filter_w):
            img[:, :, dy:dy + stride * out_h:stride, dx:dx + stride * out_w:stride] += \
                col[:, :, :, :, dy, dx].transpose(0, 3, 1, 2)
    return img[:, :, pad:H + pad, pad:W + pad]


class Convolution:
    def __init__(self, W, b, stride=1, pad=0):
        self.W, self.b, self.stride, self.pad = W, b, stride, pad
        self.x = self.col = self.col_W = None
        self.dW = self.db = None

    def forward(self, x):
        FN, C, FH, FW = self.W.shape
        N, _, H, W = x.shape
        out_h = _out_size(H, FH, self.stride, self.pad)
        out_w = _out_size(W, FW, self.stride, self.pad)
        self.x = x
        self.col = im2col(x, FH, FW, self.stride, self.pad)
        self.col_W = self.W.reshape(FN, -1).T
        out = self.col @ self.col_W + self.b
        return out.reshape(N, out_h, out_w, -1).transpose(0, 3, 1, 2)

    def backward(self, dout):
        FN, C, FH, FW = self.W.shape
        dout = dout.transpose(0, 2, 3, 1).reshape(-1, FN)
        self.db = dout.sum(axis=0)
        self.dW = (self.col.T @ dout).T.reshape(FN, C, FH, FW)
        dcol = dout @ self.col_W.T
        return col2im(dcol, self.x.shape, FH, FW, self.stride, self.pad)


class Pooling:
    """Max pooling over pool_h x pool_w windows."""

    def __init__(self, pool_h, pool_w, stride=1, pad=0):
        self.pool_h, self.pool_w, self.stride, self.pad = pool_h, pool_w, stride, pad
        self.x = self.arg_max = None

    def forward(self, x):
        N, C, H, W = x.shape
        out_h = _out_size(H, self.pool_h, self.stride, self.pad)
        out_w = _out_size(W, self.pool_w, self.stride, self.pad)
        col = im2col(x, self.pool_h, self.pool_w, self.stride, self.pad)
        col = col.reshape(-1, self.pool_h * self.pool_w)   # one window of one channel a row
        self.x, self.arg_max = x, np.argmax(col, axis=1)
        out = np.max(col, axis=1)
        return out.reshape(N, out_h, out_w, C).transpose(0, 3, 1, 2)

    def backward(self, dout):
        dout = dout.transpose(0, 2, 3, 1)
        size = self.pool_h * self.pool_w
        dmax = np.zeros((dout.size, size))
        dmax[np.arange(self.arg_max.size), self.arg_max] = dout.reshape(-1)
        dcol = dmax.reshape(dout.shape[0] * dout.shape[1] * dout.shape[2], -1)
        return col2im(dcol, self.x.shape, self.pool_h, self.pool_w, self.stride, self.pad)


# ---------------------------------------------------------------- nets


def _backprop(layers, last_layer):
    """Run backward from the loss through `layers` (an OrderedDict), last first."""
    dout = last_layer.backward(1)
    for layer in reversed(list(layers.values())):
        dout = layer.backward(dout)


class TwoLayerNet:
    """Chapter 5: Affine - Relu - Affine - SoftmaxWithLoss, params W1, b1, W2, b2."""

    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01, seed=0):
        rng = np.random.default_rng(seed)   # the book draws from np.random.randn
        self.params = {
            "W1": weight_init_std * rng.standard_normal((input_size, hidden_size)),
            "b1": np.zeros(hidden_size),
            "W2": weight_init_std * rng.standard_normal((hidden_size, output_size)),
            "b2": np.zeros(output_size),
        }
        self.layers = OrderedDict()
        self.layers["Affine1"] = Affine(self.params["W1"], self.params["b1"])
        self.layers["Relu1"] = Relu()
        self.layers["Affine2"] = Affine(self.params["W2"], self.params["b2"])
        self.lastLayer = SoftmaxWithLoss()

    def predict(self, x):
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x, t):
        return self.lastLayer.forward(self.predict(x), t)

    def numerical_gradient(self, x, t):
        loss_W = lambda W: self.loss(x, t)   # noqa: E731 (the book's form)
        return {key: numerical_gradient(loss_W, self.params[key]) for key in ("W1", "b1", "W2", "b2")}

    def gradient(self, x, t):
        self.loss(x, t)
        _backprop(self.layers, self.lastLayer)
        return {"W1": self.layers["Affine1"].dW, "b1": self.layers["Affine1"].db,
                "W2": self.layers["Affine2"].dW, "b2": self.layers["Affine2"].db}


class MultiLayerNetExtend:
    """Chapter 6: (Affine - [BatchNorm] - Relu - [Dropout]) x hidden, Affine, SoftmaxWithLoss.

    `weight_init_std` 'relu' / 'he' is He's sqrt(2 / n_in), 'sigmoid' / 'xavier'
    sqrt(1 / n_in), or a number, as in the book; so is the order of the params
    (W1, b1, gamma1, beta1, W2, ...). No weight decay (the book's default 0).
    """

    def __init__(self, input_size, hidden_size_list, output_size, weight_init_std="relu",
                 use_dropout=False, dropout_ration=0.5, use_batchnorm=False, seed=0):
        sizes = [input_size, *hidden_size_list, output_size]
        self.hidden_layer_num = len(hidden_size_list)
        self.use_batchnorm = use_batchnorm
        rng = np.random.default_rng(seed)
        self.params = {}
        for idx in range(1, len(sizes)):
            scale = weight_init_std
            if str(weight_init_std).lower() in ("relu", "he"):
                scale = np.sqrt(2.0 / sizes[idx - 1])
            elif str(weight_init_std).lower() in ("sigmoid", "xavier"):
                scale = np.sqrt(1.0 / sizes[idx - 1])
            self.params[f"W{idx}"] = scale * rng.standard_normal((sizes[idx - 1], sizes[idx]))
            self.params[f"b{idx}"] = np.zeros(sizes[idx])
        self.layers = OrderedDict()
        for idx in range(1, self.hidden_layer_num + 1):
            self.layers[f"Affine{idx}"] = Affine(self.params[f"W{idx}"], self.params[f"b{idx}"])
            if use_batchnorm:
                self.params[f"gamma{idx}"] = np.ones(sizes[idx])
                self.params[f"beta{idx}"] = np.zeros(sizes[idx])
                self.layers[f"BatchNorm{idx}"] = BatchNormalization(self.params[f"gamma{idx}"],
                                                                    self.params[f"beta{idx}"])
            self.layers[f"Activation_function{idx}"] = Relu()
            if use_dropout:
                self.layers[f"Dropout{idx}"] = Dropout(dropout_ration)
        last = self.hidden_layer_num + 1
        self.layers[f"Affine{last}"] = Affine(self.params[f"W{last}"], self.params[f"b{last}"])
        self.last_layer = SoftmaxWithLoss()

    def predict(self, x, train_flg=False):
        for layer in self.layers.values():
            x = layer.forward(x, train_flg) if isinstance(layer, (BatchNormalization, Dropout)) \
                else layer.forward(x)
        return x

    def loss(self, x, t, train_flg=False):
        return self.last_layer.forward(self.predict(x, train_flg), t)

    def _keys(self):
        for idx in range(1, self.hidden_layer_num + 2):
            yield f"W{idx}"
            yield f"b{idx}"
            if self.use_batchnorm and idx != self.hidden_layer_num + 1:
                yield f"gamma{idx}"
                yield f"beta{idx}"

    def numerical_gradient(self, X, T):
        loss_W = lambda W: self.loss(X, T, train_flg=True)   # noqa: E731 (the book's form)
        return {key: numerical_gradient(loss_W, self.params[key]) for key in self._keys()}

    def gradient(self, x, t):
        self.loss(x, t, train_flg=True)
        _backprop(self.layers, self.last_layer)
        grads = {}
        for idx in range(1, self.hidden_layer_num + 2):
            affine = self.layers[f"Affine{idx}"]
            grads[f"W{idx}"], grads[f"b{idx}"] = affine.dW, affine.db
            if self.use_batchnorm and idx != self.hidden_layer_num + 1:
                norm = self.layers[f"BatchNorm{idx}"]
                grads[f"gamma{idx}"], grads[f"beta{idx}"] = norm.dgamma, norm.dbeta
        return grads


class SimpleConvNet:
    """Chapter 7: Conv - Relu - Pool(2x2) - Affine - Relu - Affine - SoftmaxWithLoss."""

    def __init__(self, input_dim=(1, 28, 28),
                 conv_param={"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1},  # noqa: B006
                 hidden_size=100, output_size=10, weight_init_std=0.01, seed=0):
        # (the book's dict default, never mutated here)
        filter_num, filter_size = conv_param["filter_num"], conv_param["filter_size"]
        pad, stride = conv_param["pad"], conv_param["stride"]
        input_size = input_dim[1]
        conv_output_size = (input_size - filter_size + 2 * pad) // stride + 1
        pool_output_size = filter_num * (conv_output_size // 2) ** 2
        rng = np.random.default_rng(seed)
        self.params = {
            "W1": weight_init_std * rng.standard_normal((filter_num, input_dim[0], filter_size,
                                                         filter_size)),
            "b1": np.zeros(filter_num),
            "W2": weight_init_std * rng.standard_normal((pool_output_size, hidden_size)),
            "b2": np.zeros(hidden_size),
            "W3": weight_init_std * rng.standard_normal((hidden_size, output_size)),
            "b3": np.zeros(output_size),
        }
        self.layers = OrderedDict()
        self.layers["Conv1"] = Convolution(self.params["W1"], self.params["b1"], stride, pad)
        self.layers["Relu1"] = Relu()
        self.layers["Pool1"] = Pooling(pool_h=2, pool_w=2, stride=2)
        self.layers["Affine1"] = Affine(self.params["W2"], self.params["b2"])
        self.layers["Relu2"] = Relu()
        self.layers["Affine2"] = Affine(self.params["W3"], self.params["b3"])
        self.last_layer = SoftmaxWithLoss()

    def predict(self, x):
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x, t):
        return self.last_layer.forward(self.predict(x), t)

    def numerical_gradient(self, x, t):
        loss_w = lambda w: self.loss(x, t)   # noqa: E731 (the book's form)
        grads = {}
        for idx in (1, 2, 3):
            grads[f"W{idx}"] = numerical_gradient(loss_w, self.params[f"W{idx}"])
            grads[f"b{idx}"] = numerical_gradient(loss_w, self.params[f"b{idx}"])
        return grads

    def gradient(self, x, t):
        self.loss(x, t)
        _backprop(self.layers, self.last_layer)
        grads = {}
        for idx, name in enumerate(("Conv1", "Affine1", "Affine2"), start=1):
            grads[f"W{idx}"], grads[f"b{idx}"] = self.layers[name].dW, self.layers[name].db
        return grads


# ---------------------------------------------------------------- the three scripts


def _print_differences(grad_numerical, grad_backprop):
    for key in grad_numerical.keys():
        diff = np.average(np.abs(grad_backprop[key] - grad_numerical[key]))
        print(key + ":" + str(diff))


def ch05_gradient_check(x_train, t_train, hidden_size=50, n_images=3):
    """ch05/gradient_check.py: TwoLayerNet(784, 50, 10) on 3 one-hot labelled images."""
    network = TwoLayerNet(input_size=x_train.shape[1], hidden_size=hidden_size, output_size=10)
    x_batch, t_batch = x_train[:n_images], t_train[:n_images]
    grad_numerical = network.numerical_gradient(x_batch, t_batch)
    grad_backprop = network.gradient(x_batch, t_batch)
    _print_differences(grad_numerical, grad_backprop)
    return grad_numerical, grad_backprop, network


def ch06_batch_norm_gradient_check(x_train, t_train, hidden_size_list=(100, 100), n_images=1,
                                   use_dropout=False):
    """ch06/batch_norm_gradient_check.py: MultiLayerNetExtend(784, [100, 100], 10) with
    batch normalization; backprop first, then the numerical gradient (its order)."""
    network = MultiLayerNetExtend(input_size=x_train.shape[1], hidden_size_list=list(hidden_size_list),
                                  output_size=10, use_batchnorm=True, use_dropout=use_dropout)
    x_batch, t_batch = x_train[:n_images], t_train[:n_images]
    grad_backprop = network.gradient(x_batch, t_batch)
    grad_numerical = network.numerical_gradient(x_batch, t_batch)
    _print_differences(grad_numerical, grad_backprop)
    return grad_numerical, grad_backprop, network


def ch07_gradient_check(seed=0):
    """ch07/gradient_check.py: SimpleConvNet on one random 10x10 image, label 1."""
    network = SimpleConvNet(input_dim=(1, 10, 10),
                            conv_param={"filter_num": 10, "filter_size": 3, "pad": 0, "stride": 1},
                            hidden_size=10, output_size=10, weight_init_std=0.01)
    X = np.random.default_rng(seed).random(100).reshape((1, 1, 10, 10))
    T = np.array([1]).reshape((1, 1))
    grad_num = network.numerical_gradient(X, T)
    grad = network.gradient(X, T)
    for key in grad_num.keys():
        print(key, np.abs(grad_num[key] - grad[key]).mean())
    return grad_num, grad, network
