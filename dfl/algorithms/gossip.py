"""Gossip learning as run by Tian, Al-Ars, Kitsak, Hofstee ("Vanishing Variance Problem in Fully
Decentralized Neural-Network Systems", arXiv 2404.04616).

Per round t, every node i trains locally, sends its model to its neighbours N(i) in the
communication graph, and merges what it received with weight β on itself:

    y_i = LocalUpdate_i(θ_i^t)                       (K optimizer steps on node i's own data)
    θ_i^{t+1} = β y_i + (1 - β) (1/d_i) Σ_{j ∈ N(i)} y_j

that is, one gossip step with W = β I + (1 - β) D⁻¹ A, where A is the graph's adjacency (the
nonzero off-diagonal pattern of the topology's W) and D its degrees. The topology's own weights
are ignored: only its edges count. A node without neighbours keeps its model. W is row- but in
general not column-stochastic (it is doubly stochastic on regular graphs, the paper's setting).
The local optimizer (momentum) persists across rounds, as on a node that trains continuously.

Variance-corrected averaging (`dfl.variance_correction`) plugs in as `mixer`; with this W its
`follow_others` target is the uniform mean of the received models' variances, as in the paper.
Symbols -> names: β = self_weight, K = local_steps, eta = lr.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax.numpy as jnp

from dfl.algorithms.base import Algorithm
from dfl.algorithms.local_then_gossip import Mixer, local_then_gossip
from dfl.local import make_local_sgd, make_optimizer
from dfl.mixing import DenseMixing, Mixing, SparseMixing, mix


def gossip_learning_mixing(mixing: Mixing, self_weight: float) -> Mixing:
  """W = β I + (1 - β) D⁻¹ A from the edge pattern of `mixing` (dense or sparse form, traced)."""
  beta = jnp.float32(self_weight)
  if isinstance(mixing, DenseMixing):
    W = mixing.W
    n = W.shape[0]
    eye_NxN = jnp.eye(n, dtype=jnp.float32)
    A_NxN = ((W != 0) & (eye_NxN == 0)).astype(jnp.float32)
    deg_N = A_NxN.sum(axis=1)
    alone_N = (deg_N == 0).astype(jnp.float32)
    neighbours_NxN = (1 - beta) * A_NxN / jnp.maximum(deg_N, 1)[:, None]
    return DenseMixing((beta + (1 - beta) * alone_N)[:, None] * eye_NxN + neighbours_NxN)
  idx_NxK, w_NxK = mixing.indices, mixing.weights
  n = idx_NxK.shape[0]
  self_N1 = jnp.arange(n, dtype=idx_NxK.dtype)[:, None]
  edge_NxK = ((w_NxK != 0) & (idx_NxK != self_N1)).astype(jnp.float32)
  deg_N = edge_NxK.sum(axis=1)
  self_w_N1 = (beta + (1 - beta) * (deg_N == 0))[:, None]
  neighbour_w_NxK = (1 - beta) * edge_NxK / jnp.maximum(deg_N, 1)[:, None]
  # The node itself gets its own slot in front: the neighbour form may not list it.
  return SparseMixing(jnp.concatenate([self_N1, idx_NxK], axis=1),
                      jnp.concatenate([self_w_N1, neighbour_w_NxK], axis=1))


def gossip_learning(loss_fn: Callable, *, lr: float, local_steps: int, batch_size: int,
                    self_weight: float = 0.5, momentum: float = 0.0, weight_decay: float = 0.0,
                    lr_decay: float = 1.0, mixer: Optional[Mixer] = None,
                    clip_norm: Optional[float] = None,
                    augment: Optional[Callable] = None) -> Algorithm:
  """Gossip learning; `mixer` (one gossip step) defaults to plain averaging."""
  if not 0.0 <= self_weight < 1.0:
    raise ValueError(f"self_weight (β) must be in [0, 1), got {self_weight}; 1 would never gossip.")
  optimizer = make_optimizer(lr=lr, momentum=momentum, weight_decay=weight_decay,
                             clip_norm=clip_norm)
  local_sgd = make_local_sgd(loss_fn, optimizer, local_steps=local_steps, batch_size=batch_size,
                             augment=augment)
  step = mixer or mix
  gossip_step = lambda mixing, params: step(gossip_learning_mixing(mixing, self_weight), params)
  return local_then_gossip(local_sgd, optimizer, reset_optimizer=False, lr_decay=lr_decay,
                           mixer=gossip_step)
