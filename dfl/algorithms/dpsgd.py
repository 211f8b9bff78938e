"""D-PSGD (Lian et al., "Can Decentralized Algorithms Outperform Centralized Algorithms?", 2017).

Per round t, every node takes K local stochastic gradient steps (K = 1 by default, Lian et al.'s
algorithm), then gossips:

    y_j = x_j^t - eta_t * sum_{k<K} grad F_j(y_j^k; xi_j^k)      (K = 1: one SGD step)
    x_i^{t+1} = sum_j w_ij y_j

This is the adapt-then-combine form used by the DFedSAM comparison: Lian et al.'s Algorithm 1
combines concurrently, x_i^{t+1} = sum_j w_ij x_j^t - eta * grad F_i(x_i^t; xi_i); the two differ
by O(eta) per round, and the form used here makes the complete-graph reduction exact (with
W = 11^T/N it is centralized minibatch SGD on the union of the nodes' batches).
K > 1 local steps, or E local epochs, are the D-PSGD baselines of DisPFL (Dai et al., ICML 2022;
fedml_api/standalone/dpsgd/my_model_trainer.py runs `args.epochs` local epochs) and MoDeST
(local steps). Momentum, if any, is kept across rounds (one step per round would otherwise
make it void); with momentum 0 the local phase is DFedAvg's, so D-PSGD with K local steps is
DFedAvg with K local steps on the same graph.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax

from dfl.algorithms import common, registry
from dfl.algorithms.base import Algorithm
from dfl.algorithms.local_then_gossip import Mixer, local_then_gossip
from dfl.local import AugmentFn, make_local_sgd, make_optimizer


def dpsgd(loss_fn: Callable, *, lr: float, batch_size: int, local_steps: int = 1,
          momentum: float = 0.0, weight_decay: float = 0.0, lr_decay: float = 1.0,
          mixer: Optional[Mixer] = None, num_steps_N: Optional[jax.Array] = None,
          clip_norm: Optional[float] = None, augment: Optional[AugmentFn] = None,
          max_epochs: Optional[int] = None, model_state_N=None,
          average_stats: bool = True) -> Algorithm:
  """Builds D-PSGD; arguments as in `dfl.algorithms.dfedsam.dfedsam` (K = local_steps)."""
  optimizer = make_optimizer(lr=lr, momentum=momentum, weight_decay=weight_decay,
                             clip_norm=clip_norm)
  local_sgd = make_local_sgd(loss_fn, optimizer, local_steps=local_steps, batch_size=batch_size,
                             augment=augment, max_epochs=max_epochs)
  return local_then_gossip(local_sgd, optimizer, reset_optimizer=False, lr_decay=lr_decay,
                           mixer=mixer, num_steps_N=num_steps_N, model_state_N=model_state_N,
                           average_stats=average_stats)


@registry.register("dpsgd", uses_topology=True, uses_mixer=True,
                   supports_model_state=True, hyperparameters=(
    *common.local_update(common.ONE_LOCAL_STEP), common.MOMENTUM))
def build(a, ctx) -> Algorithm:
  return dpsgd(ctx.loss_fn, momentum=registry.resolved(a, "momentum"), mixer=ctx.mixer,
               **common.local_options(a, ctx))
