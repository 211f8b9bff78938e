"""Flax models for one node (no node axis: the engine vmaps them).

`mlp`: the FedAvg-paper MLP (784-200-200-10 on MNIST-sized inputs).
`cnn`: conv5x5x32 - maxpool2 - conv5x5x64 - maxpool2 - fc512 - fc10 ('SAME' padding), the CNN
of the FedAvg / DFedSAM experiments on (Fashion-)MNIST: 1,663,370 parameters on MNIST, 27x
LeNet-5's. It is not LeNet-5.
`lenet5`: LeNet-5 as the vanishing-variance paper runs it (Tian et al., arXiv 2404.04616), after
DFL_torch's py_src/models/lenet/lenet.py (class LeNet5) and ml_setup_base/mnist_models.py
(lenet5_mnist): conv5x5x6 (padding 2 = 'SAME' for stride 1) - ReLU - maxpool2 - conv5x5x16 (no
padding, 'VALID') - ReLU - maxpool2 - fc120 - ReLU - fc84 - ReLU - fc10; 61,706 parameters on
28x28x1 inputs. Initialisation as the reference's `weights_init_xavier`, which replaces torch's
default: every kernel Xavier/Glorot uniform, U(±sqrt(6 / (fan_in + fan_out))) with
fan_in = Cin·kh·kw, fan_out = Cout·kh·kw (dense: in, out), and every bias 0. Deviation: the
reference flattens [C, H, W], this model [H, W, C]: a fixed permutation of fc1's input rows,
which changes no distribution and no result up to that relabelling.
`logreg`: multinomial logistic regression.
`linear`: x -> <x, w>, one output and no bias: the model of the least-squares problem
(`data.name=least_squares`), trained with the squared error (`squared_error_loss`).
Losses (`make_loss`): cross-entropy for the classifiers, squared error for `linear`; either adds
an L2 term (model.l2 / 2) ||params||^2 on every parameter when model.l2 > 0, part of each node's
objective f_i (and so of the global minimizer dfl/optimum.py computes).
Convolutions and 2x2 max-pools come from dfl/layers.py (`conv`: auto | xla | im2col, the
formulation that runs fast on the backend; the parameters are nn.Conv's either way).
`vgg11`, `resnet18`: CIFAR models with GroupNorm, or BatchNorm with model.norm=batch, in
dfl/models_cifar.py.
Models with state (BatchNorm statistics) or dropout, built in or a user's, are trained with
`make_train_loss` (dfl/model_state.py states the module contract); the others with `make_loss`.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from dfl.errors import UserError
from dfl.imports import is_import_path, resolve
from dfl.layers import Conv, max_pool_2x2
from dfl.model_state import (ModelState, StatefulLoss, is_stateful_model, takes_argument,
                             make_train_loss as _make_train_loss)
from dfl.models_cifar import NORMS, resnet18, vgg11


class MLP(nn.Module):
  hidden: Sequence[int] = (200, 200)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_classes)(x)


class CNN(nn.Module):
  num_classes: int = 10
  conv: str = "auto"

  @nn.compact
  def __call__(self, x):
    x = max_pool_2x2(nn.relu(Conv(32, (5, 5), impl=self.conv)(x)))
    x = max_pool_2x2(nn.relu(Conv(64, (5, 5), impl=self.conv)(x)))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(512)(x))
    return nn.Dense(self.num_classes)(x)


class LeNet5(nn.Module):
  """LeNet-5 of DFL_torch (py_src/models/lenet/lenet.py), for 28x28 inputs (see module docstring)."""
  num_classes: int = 10
  conv: str = "auto"

  @nn.compact
  def __call__(self, x):
    kernel_init, bias_init = nn.initializers.xavier_uniform(), nn.initializers.zeros_init()
    conv = lambda features, padding: Conv(features, (5, 5), impl=self.conv, padding=padding,
                                          kernel_init=kernel_init, bias_init=bias_init)
    dense = lambda features: nn.Dense(features, kernel_init=kernel_init, bias_init=bias_init)
    x = max_pool_2x2(nn.relu(conv(6, "SAME")(x)))
    x = max_pool_2x2(nn.relu(conv(16, "VALID")(x)))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(dense(120)(x))
    x = nn.relu(dense(84)(x))
    return dense(self.num_classes)(x)


class LogReg(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


class Linear(nn.Module):
  """<x, w> with w [D, 1] (no bias): least squares' f_i(w) = (1/2n) ||A_i w - b_i||^2."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(1, use_bias=False)(x.reshape(x.shape[0], -1))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda num_classes, hidden=(200, 200), **_: MLP(tuple(hidden), num_classes),
    "cnn": lambda num_classes, conv="auto", **_: CNN(num_classes, conv),
    "lenet5": lambda num_classes, conv="auto", **_: LeNet5(num_classes, conv),
    "logreg": lambda num_classes, **_: LogReg(num_classes),
    "linear": lambda num_classes, **_: Linear(),
    "vgg11": vgg11,
    "resnet18": resnet18,
}

# Models that take model.norm (group | batch); the others have no normalisation layer.
NORM_MODELS = frozenset({"vgg11", "resnet18"})


def make_model(name: str, num_classes: int, kwargs: Optional[dict] = None,
               norm: str = "group", **options) -> nn.Module:
  """A built-in model (`options`: model.hidden, model.conv) or a user's, by import path.

  `norm` (model.norm): "group" or "batch" for the models in NORM_MODELS; the others refuse
  "batch".

  "package.module:Name" names a flax Module class or a factory returning a Module; it is called
  with `kwargs` (the config's model.kwargs), plus num_classes when it takes that argument and
  kwargs does not set it.
  """
  kwargs = dict(kwargs or {})
  if is_import_path(name):
    return _user_model(name, num_classes, kwargs)
  if name not in MODELS:
    raise ValueError(f"Unknown model.name={name!r}; valid: {sorted(MODELS)} or an import path "
                     "'package.module:Module'.")
  if kwargs:
    raise UserError(f"model.kwargs={kwargs} is for models named by import path; the built-in "
                    f"model.name={name!r} takes model.hidden and model.conv.")
  if norm not in NORMS:
    raise ValueError(f"Unknown model.norm={norm!r}; valid: {list(NORMS)}.")
  if name in NORM_MODELS:
    return MODELS[name](num_classes, norm=norm, **options)
  if norm != "group":
    raise ValueError(f"model.norm={norm!r} is for {sorted(NORM_MODELS)}; model.name={name!r} "
                     "has no normalisation layer: leave model.norm='group'.")
  return MODELS[name](num_classes, **options)


def _user_model(path: str, num_classes: int, kwargs: dict) -> nn.Module:
  target = resolve(path, "model.name")
  if not callable(target):
    raise UserError(f"model.name={path!r} names a {type(target).__name__}, not a flax Module "
                    "class or a factory returning one.")
  if isinstance(target, type) and issubclass(target, nn.Module):
    takes_classes = "num_classes" in getattr(target, "__dataclass_fields__", {})
  else:
    try:
      takes_classes = "num_classes" in inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin without a signature
      takes_classes = False
  if takes_classes:
    kwargs.setdefault("num_classes", num_classes)
  try:
    model = target(**kwargs)
  except TypeError as e:
    raise UserError(f"model.name={path!r} could not be built with model.kwargs={kwargs}: "
                    f"{e}") from None
  if not isinstance(model, nn.Module):
    raise UserError(f"model.name={path!r} returned a {type(model).__name__}, not a flax "
                    "Module.")
  return model


# Models trained as regressions (float targets, squared error); the others classify.
REGRESSION_MODELS = frozenset({"linear"})


def _masked_mean(per_sample, mask):
  if mask is None:
    return jnp.mean(per_sample)
  mask = mask.astype(per_sample.dtype)
  return jnp.sum(per_sample * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def l2_penalty(params, l2: float):
  """(l2 / 2) ||params||^2 over every leaf."""
  return 0.5 * l2 * sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params))


def squared_error_loss(model: nn.Module, l2: float = 0.0) -> Callable:
  """loss(params, x, y, mask=None) -> (1/2) mean over the valid lanes of (f(x) - y)^2, plus
  (l2 / 2) ||params||^2: for `linear`, f_i(w) = (1/(2 n_i)) ||A_i w - b_i||^2 + (l2/2)||w||^2."""
  def loss(params, x, y, mask=None):
    pred = model.apply({"params": params}, x)[..., 0]
    value = _masked_mean(0.5 * jnp.square(pred - y), mask)
    return value + l2_penalty(params, l2) if l2 else value
  return loss


def make_loss(name: str, model: nn.Module, l2: float = 0.0) -> Callable:
  """The training loss of model `name`: squared error for regressions, else cross-entropy."""
  if name in REGRESSION_MODELS:
    return squared_error_loss(model, l2)
  return cross_entropy_loss(model, l2)


def make_train_loss(name: str, model: nn.Module, collections: tuple, *, takes_mask: bool,
                    l2: float = 0.0) -> StatefulLoss:
  """`make_loss` for a model with state or dropout (dfl/model_state.py): loss(params, x, y,
  mask, model_state, key) -> (value, new_model_state), the same masked-mean objective (plus
  the same L2 term) computed in train mode."""
  if name in REGRESSION_MODELS:
    per_sample = lambda out, y: 0.5 * jnp.square(out[..., 0] - y)
  else:
    per_sample = optax.softmax_cross_entropy_with_integer_labels
  penalty = (lambda params: l2_penalty(params, l2)) if l2 else None
  return _make_train_loss(model, per_sample, collections=collections, takes_mask=takes_mask,
                          masked_mean=_masked_mean, penalty=penalty)


def model_loss(name: str, model: nn.Module, model_state_N: dict, *, l2: float = 0.0,
               average_stats: bool = True) -> tuple[Callable, Optional[ModelState]]:
  """(loss_fn, ModelState or None) for `model` with its initial per-node state (every
  collection but params, `dfl.model_state.split_variables`): `make_loss` and None for a
  stateless model (only params, no `train` argument), else `make_train_loss` and the
  description the algorithms and the evaluator read."""
  if not is_stateful_model(model, model_state_N):
    return make_loss(name, model, l2), None
  collections = tuple(model_state_N)
  takes_mask = takes_argument(model, "mask")
  return (make_train_loss(name, model, collections, takes_mask=takes_mask, l2=l2),
          ModelState(name, collections, takes_mask, model_state_N, average_stats))


def cross_entropy_loss(model: nn.Module, l2: float = 0.0) -> Callable:
  """loss(params, x, y, mask=None) -> softmax cross-entropy of one node's minibatch, averaged
  over the samples where the 0/1 `mask` [B] is 1 (all of them when None), plus (l2 / 2)
  ||params||^2 when l2 > 0: the short last batch
  of an epoch is padded to B lanes and its padding masked (`dfl.local`)."""
  def loss(params, x, y, mask=None):
    logits = model.apply({"params": params}, x)
    per_sample = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    value = _masked_mean(per_sample, mask)
    return value + l2_penalty(params, l2) if l2 else value
  return loss
