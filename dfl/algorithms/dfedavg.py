"""DFedAvg and DFedAvgM (Sun, Li, Wang, "Decentralized Federated Averaging", TPAMI 2022).

Per node i and round t, with K local steps of SGD (learning rate eta_t, heavy-ball momentum
theta for DFedAvgM) on consecutive minibatches xi of node i's data (`dfl.local`):

    y^0 = x_i^t;  y^{k+1} = y^k - eta_t * v^{k+1},  v^{k+1} = theta * v^k + grad F_i(y^k; xi)
    x_i^{t+1} = sum_l w_il y_l^K

Symbols -> names: K = local_steps (or E local epochs: `num_steps_N`, `max_epochs`),
eta_t = lr * lr_decay**t, theta = momentum, w = the mixing matrix W.
The momentum v restarts at 0 every round (the paper's Algorithm 2, a fresh local optimizer per
round), unless `keep_optimizer_state`: then each node carries its own v from round to round
(its buffer is not mixed), as a node whose one optimizer lives for the whole run (codes that
create the optimizer once, outside the round loop). Optional: coupled weight decay,
gradient clipping to a global norm (`dfl.local.make_optimizer`), per-batch augmentation.

Registered as `dfedavg` (momentum pinned at 0: algorithm.momentum may only be unset or 0) and
`dfedavgm` (momentum default 0.9, in (0, 1)).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax

from dfl.algorithms import common, registry
from dfl.algorithms.base import Algorithm
from dfl.algorithms.local_then_gossip import Mixer, local_then_gossip
from dfl.hyperparameters import require
from dfl.local import AugmentFn, make_local_sgd, make_optimizer


def dfedavg(loss_fn: Callable, *, lr: float, local_steps: int, batch_size: int,
            momentum: float = 0.0, weight_decay: float = 0.0, lr_decay: float = 1.0,
            mixer: Optional[Mixer] = None, num_steps_N: Optional[jax.Array] = None,
            keep_optimizer_state: bool = False, clip_norm: Optional[float] = None,
            augment: Optional[AugmentFn] = None, max_epochs: Optional[int] = None,
            model_state_N=None, average_stats: bool = True) -> Algorithm:
  """Builds DFedAvg (momentum 0) or DFedAvgM; arguments as in `dfl.algorithms.dfedsam.dfedsam`."""
  optimizer = make_optimizer(lr=lr, momentum=momentum, weight_decay=weight_decay,
                             clip_norm=clip_norm)
  local_sgd = make_local_sgd(loss_fn, optimizer, local_steps=local_steps, batch_size=batch_size,
                             augment=augment, max_epochs=max_epochs)
  return local_then_gossip(local_sgd, optimizer, reset_optimizer=not keep_optimizer_state,
                           lr_decay=lr_decay, mixer=mixer, num_steps_N=num_steps_N,
                           model_state_N=model_state_N, average_stats=average_stats)


def _check_no_momentum(a) -> None:
  require(a.momentum in (None, 0.0),
          f"algorithm.name='dfedavg' is plain local SGD but algorithm.momentum={a.momentum}; use "
          "algorithm.name='dfedavgm' for local momentum.")


def _check_momentum_m(a) -> None:
  momentum = registry.resolved(a, "momentum")
  require(0.0 < momentum < 1.0,
          f"algorithm.name='dfedavgm' needs 0 < algorithm.momentum < 1, got {momentum}.")


_LOCAL = (*common.LOCAL_UPDATE, common.KEEP_OPTIMIZER_STATE)
_NO_MOMENTUM = dataclasses.replace(common.MOMENTUM, batchable=False, check=_check_no_momentum,
                                   doc="pinned at 0 (dfedavgm has momentum)")


@registry.register("dfedavg", uses_topology=True, uses_mixer=True,
                   supports_model_state=True, hyperparameters=(*_LOCAL, _NO_MOMENTUM))
def build_dfedavg(a, ctx) -> Algorithm:
  return dfedavg(ctx.loss_fn, momentum=registry.resolved(a, "momentum"), mixer=ctx.mixer,
                 keep_optimizer_state=a.get("keep_optimizer_state", False),
                 **common.local_options(a, ctx))


@registry.register("dfedavgm", uses_topology=True, uses_mixer=True,
                   supports_model_state=True, hyperparameters=(
    *_LOCAL, dataclasses.replace(common.MOMENTUM, default=0.9, check=_check_momentum_m)))
def build_dfedavgm(a, ctx) -> Algorithm:
  return dfedavg(ctx.loss_fn, momentum=registry.resolved(a, "momentum"), mixer=ctx.mixer,
                 keep_optimizer_state=a.get("keep_optimizer_state", False),
                 **common.local_options(a, ctx))
