"""DFedSAM (Shi, Shen, Wei, Sun, Yuan, Wang, Tao, "Improving the Model Consistency of
Decentralized Federated Learning", ICML 2023, arXiv 2302.04083, Algorithm 1).

Per node i and round t, K local SAM steps on node i's own data, then one gossip step:

    y^0 = x_i^t
    for k < K, on the k-th minibatch xi of the node's stream (`dfl.local`):
        g       = grad F_i(y^k; xi)
        delta   = rho * g / ||g||                 (global L2 norm over all parameters)
        g_tilde = grad F_i(y^k + delta; xi)       (same minibatch xi)
        y^{k+1} = y^k - eta_t * g_tilde           (local optax chain: SGD, optional momentum/wd)
    x_i^{t+1} = sum_l w_il y_l^K

Symbols -> names: K = local_steps (or E local epochs, `num_steps_N`), eta = lr,
eta_t = lr * lr_decay**t, rho = rho, w = the mixing matrix W, g_tilde = `dfl.sam.sam_gradient`.
DFedSAM-MGS (dfedsam_mgs.py) is this local phase followed by Q gossip steps.
With rho = 0 the local phase is plain SGD and DFedSAM is DFedAvg(M), bit for bit.
The local optimizer state (momentum) restarts every round unless `keep_optimizer_state`.
Gradient clipping (`clip_norm`) acts on g_tilde, before weight decay and momentum.
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
from dfl.sam import make_sam_gradient


def dfedsam(loss_fn: Callable, *, lr: float, rho: float, local_steps: int, batch_size: int,
            gossip_steps: int = 1, momentum: float = 0.0, weight_decay: float = 0.0,
            lr_decay: float = 1.0, mixer: Optional[Mixer] = None,
            num_steps_N: Optional[jax.Array] = None, keep_optimizer_state: bool = False,
            clip_norm: Optional[float] = None, augment: Optional[AugmentFn] = None,
            max_epochs: Optional[int] = None, model_state_N=None,
            average_stats: bool = True) -> Algorithm:
  """Builds DFedSAM (gossip_steps = 1) or its multi-gossip variant (gossip_steps = Q).

  Args:
    loss_fn: loss(params, x, y, mask) of one node's minibatch (mean over the valid lanes).
    lr: local learning rate eta.
    rho: SAM radius; 0 gives plain local SGD (DFedAvg).
    local_steps: K, local SAM steps per round (the scan length when `num_steps_N` is given).
    batch_size: minibatch size of every local step.
    gossip_steps: Q, gossip exchanges after the local phase (Q = 1 is DFedSAM).
    momentum: heavy-ball momentum of the local optimizer.
    weight_decay: coupled L2 weight decay of the local optimizer.
    lr_decay: eta_t = lr * lr_decay**t.
    mixer: replaces plain gossip (e.g. variance-corrected mixing).
    num_steps_N: optional per-node step counts (E local epochs over unequal shards).
    keep_optimizer_state: carry each node's optimizer state (momentum) across rounds instead
      of restarting it every round.
    clip_norm: clip the gradient to this global L2 norm (None: no clipping).
    augment: optional augment(key, x_B) -> x_B applied to every local minibatch.
    max_epochs: bound on the epochs a round reads (E in local_epochs mode; None: K).
    model_state_N: the nodes' initial model states for a model with state (BatchNorm
      statistics; `loss_fn` is then a `dfl.model_state.StatefulLoss`), None for a plain one.
    average_stats: gossip mixes the model states with W like the parameters (False: each node
      keeps its own).
  """
  optimizer = make_optimizer(lr=lr, momentum=momentum, weight_decay=weight_decay,
                             clip_norm=clip_norm)
  local_sam = make_local_sgd(loss_fn, optimizer, local_steps=local_steps, batch_size=batch_size,
                             gradient=make_sam_gradient(loss_fn, rho), augment=augment,
                             max_epochs=max_epochs)
  return local_then_gossip(local_sam, optimizer, gossip_steps=gossip_steps,
                           reset_optimizer=not keep_optimizer_state, lr_decay=lr_decay,
                           mixer=mixer, num_steps_N=num_steps_N, model_state_N=model_state_N,
                           average_stats=average_stats)


def _check_one_gossip_step(a) -> None:
  require(a.gossip_steps in (None, 1),
          f"algorithm.name='dfedsam' gossips once per round but algorithm.gossip_steps="
          f"{a.gossip_steps}; use algorithm.name='dfedsam_mgs' for Q > 1.")


# Q pinned at 1 (dfedsam_mgs repeats gossip).
_ONE_GOSSIP_STEP = dataclasses.replace(common.GOSSIP_STEPS, check=_check_one_gossip_step)


@registry.register("dfedsam", uses_topology=True, uses_mixer=True,
                   supports_model_state=True, hyperparameters=(
    *common.LOCAL_UPDATE, common.RHO, _ONE_GOSSIP_STEP, common.MOMENTUM,
    common.KEEP_OPTIMIZER_STATE))
def build(a, ctx) -> Algorithm:
  return dfedsam(ctx.loss_fn, rho=a.rho, gossip_steps=registry.resolved(a, "gossip_steps"),
                 momentum=registry.resolved(a, "momentum"), mixer=ctx.mixer,
                 keep_optimizer_state=a.get("keep_optimizer_state", False),
                 **common.local_options(a, ctx))
