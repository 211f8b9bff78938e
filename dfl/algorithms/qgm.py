"""Quasi-global momentum, QG-DSGDm: Lin, Karimireddy, Stich and Jaggi, "Quasi-Global Momentum:
Accelerating Decentralized Deep Learning on Heterogeneous Data", ICML 2021 (Algorithm 1).

Each node keeps a momentum buffer m̂_i built from the model's change across a whole round,
gossip included, instead of from its own gradients (which on heterogeneous data point away
from the global direction):

    g_i = grad F_i(x_i^t; xi_i^t) + wd x_i^t
    m_i = beta m̂_i^{t-1} + g_i
    x_i^{t+1/2} = x_i^t - eta_t m_i
    x_i^{t+1} = sum_j w_ij x_j^{t+1/2}
    d_i^t = (x_i^t - x_i^{t+1}) / eta_t
    m̂_i^t = mu m̂_i^{t-1} + (1 - mu) d_i^t,          m̂^{-1} = 0

Symbols: beta = algorithm.momentum (default 0.9), eta = algorithm.lr (times lr_decay^t),
mu = beta. Reference code: code/pcode/optim/decentralized_qg_sgd.py of
github.com/epfml/quasi-global-momentum (class SGD, step()): m = beta m̂ + g on a copy of the
buffer, the half step, the gossip, virtual_seq_buffer = (x^t - x^{t+1}) / lr, and with the
default slow_buffer_conf (local_step 1, factor 0.1) m̂ <- 0.9 m̂ + 0.1 d, i.e. mu = 0.9 whatever
beta is; here mu = beta (the same at the paper's beta = 0.9), and weight decay is added to the
gradient before the momentum, as there. Deviations: no Nesterov variant, no slow-buffer period
(local_step > 1), one gradient step per round (local_steps must be 1), no local_epochs or
clipping. One exchange per round (x^{t+1/2}), one transfer per edge.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from dfl.algorithms import common, registry
from dfl.algorithms.base import (Algorithm, RoundInputs, RoundMetrics, node_gradients,
                                 refuse_mixer, refuse_unsupported)
from dfl.hyperparameters import require
from dfl.local import AugmentFn
from dfl.mixing import messages_per_step, mix

PyTree = object


class QGMState(NamedTuple):
  params: PyTree  # [N, ...] x_i
  momentum: PyTree  # [N, ...] m̂_i, the quasi-global momentum buffer


def qgm(loss_fn: Callable, *, lr: float, batch_size: int, momentum: float = 0.9,
        weight_decay: float = 0.0, lr_decay: float = 1.0,
        augment: Optional[AugmentFn] = None) -> Algorithm:
  """Builds QG-DSGDm; equations in the module docstring.

  Args:
    loss_fn: loss(params, x_B, y_B, mask_B).
    lr: eta.
    batch_size: B; 0: full batches.
    momentum: beta (and mu), in [0, 1).
    weight_decay: coupled L2 added to the gradient before the momentum.
    lr_decay: eta_t = lr * lr_decay**t.
    augment: optional augment(key, x_B) -> x_B.
  """
  gradients = node_gradients(loss_fn, batch_size=batch_size, weight_decay=weight_decay,
                             augment=augment)
  beta = mu = momentum

  def init(params_N):
    return QGMState(params_N, jax.tree.map(jnp.zeros_like, params_N))

  def round_fn(state: QGMState, inputs: RoundInputs):
    eta = lr * jnp.asarray(lr_decay, jnp.float32) ** inputs.round
    loss_N, g = gradients(state.params, inputs)
    half = jax.tree.map(lambda x, m, gi: x - eta.astype(x.dtype) * (beta * m + gi),
                        state.params, state.momentum, g)
    params = mix(inputs.mixing, half)
    buffer = jax.tree.map(
        lambda m, x, x_new: mu * m + (1 - mu) * (x - x_new) / eta.astype(x.dtype),
        state.momentum, state.params, params)
    sent_N, received_N = messages_per_step(inputs.mixing)
    metrics = RoundMetrics(loss=loss_N.mean(), transfers=sent_N.sum(), sent_N=sent_N,
                           received_N=received_N)
    return QGMState(params, buffer), metrics

  return Algorithm(init, round_fn)


def _check_momentum(a) -> None:
  beta = float(registry.resolved(a, "momentum"))
  require(0.0 <= beta < 1.0, f"algorithm.name='qgm' needs 0 <= algorithm.momentum < 1, got {beta}.")


@registry.register(
    "qgm", uses_topology=True, no_variance_correction=True, one_gradient_per_round=True,
    check=lambda a, num_nodes: refuse_unsupported(a, one_step=True, momentum=True),
    hyperparameters=(common.LR, common.LR_DECAY, common.BATCH_SIZE, common.WEIGHT_DECAY,
                     dataclasses.replace(common.MOMENTUM, default=0.9, check=_check_momentum)))
def build(a, ctx) -> Algorithm:
  """The registry's builder: reads the `algorithm` config section (momentum default 0.9)."""
  refuse_mixer(a.name, ctx)
  beta = registry.resolved(a, "momentum")  # a float, or traced (batched runs)
  return qgm(ctx.loss_fn, lr=a.lr, batch_size=a.batch_size, momentum=beta,
             weight_decay=a.weight_decay, lr_decay=a.lr_decay, augment=ctx.augment)
