"""DFedSAM-MGS (Shi et al., "Improving the Model Consistency of Decentralized Federated
Learning", ICML 2023, arXiv 2302.04083, Algorithm 1 with multiple gossip steps).

The local phase is DFedSAM's (K SAM steps from y^0 = x_i^t, see dfedsam.py); the
communication phase repeats gossip Q times, every step a real exchange with the neighbours:

    z^0 = y^K  (all nodes);   z^q = W z^{q-1}  for q = 1..Q;   x^{t+1} = z^Q = W^Q y^K

Symbols -> names: Q = gossip_steps; the rest as in dfedsam.py. Q = 1 is DFedSAM. A round sends
Q times the models of a DFedSAM round; the consensus distance after mixing shrinks
geometrically in Q (by the second largest eigenvalue modulus of W, squared, per step).
"""
from __future__ import annotations

from typing import Callable, Optional

import jax

from dfl.algorithms import common, registry
from dfl.algorithms.base import Algorithm
from dfl.algorithms.dfedsam import dfedsam
from dfl.algorithms.local_then_gossip import Mixer
from dfl.local import AugmentFn

PAPER_GOSSIP_STEPS = 4  # Q of the paper's main experiments


def dfedsam_mgs(loss_fn: Callable, *, lr: float, rho: float, local_steps: int, batch_size: int,
                gossip_steps: int = PAPER_GOSSIP_STEPS, momentum: float = 0.0,
                weight_decay: float = 0.0, lr_decay: float = 1.0, mixer: Optional[Mixer] = None,
                num_steps_N: Optional[jax.Array] = None, keep_optimizer_state: bool = False,
                clip_norm: Optional[float] = None, augment: Optional[AugmentFn] = None,
                max_epochs: Optional[int] = None, model_state_N=None,
                average_stats: bool = True) -> Algorithm:
  """Builds DFedSAM-MGS: DFedSAM's local SAM phase, then Q = `gossip_steps` gossip steps.

  Arguments as in `dfl.algorithms.dfedsam.dfedsam`; `gossip_steps` must be >= 1.
  """
  if gossip_steps < 1:
    raise ValueError(f"DFedSAM-MGS needs gossip_steps (Q) >= 1, got {gossip_steps}.")
  return dfedsam(loss_fn, lr=lr, rho=rho, local_steps=local_steps, batch_size=batch_size,
                 gossip_steps=gossip_steps, momentum=momentum, weight_decay=weight_decay,
                 lr_decay=lr_decay, mixer=mixer, num_steps_N=num_steps_N,
                 keep_optimizer_state=keep_optimizer_state, clip_norm=clip_norm, augment=augment,
                 max_epochs=max_epochs, model_state_N=model_state_N,
                 average_stats=average_stats)


@registry.register("dfedsam_mgs", uses_topology=True, uses_mixer=True,
                   supports_model_state=True, hyperparameters=(
    *common.LOCAL_UPDATE, common.RHO, common.GOSSIP_STEPS.with_default(PAPER_GOSSIP_STEPS),
    common.MOMENTUM, common.KEEP_OPTIMIZER_STATE))
def build(a, ctx) -> Algorithm:
  return dfedsam_mgs(ctx.loss_fn, rho=a.rho, gossip_steps=registry.resolved(a, "gossip_steps"),
                     momentum=registry.resolved(a, "momentum"), mixer=ctx.mixer,
                     keep_optimizer_state=a.get("keep_optimizer_state", False),
                     **common.local_options(a, ctx))
