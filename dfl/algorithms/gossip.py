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

Sample-count weights (`aggregation_weights="num_samples"`): the received models are weighted by
their shards' sizes n_j instead of uniformly, the own model keeping β,

    θ_i^{t+1} = β y_i + (1 - β) Σ_{j ∈ N(i)} n_j y_j / Σ_{j ∈ N(i)} n_j,

the weighting n_k / Σ n of FedAvg (McMahan et al.) as DisPFL's reference computes it
(github.com/rong-dai/DisPFL, fedml_api/standalone/fedavg/fedavg_api.py `_aggregate`: weights
over the models aggregated, normalised to sum 1). DisPFL's own D-PSGD
(fedml_api/standalone/dpsgd/dpsgd_api.py `_aggregate_func`) averages its neighbours and itself
uniformly; the sample-count form here is that `_aggregate` applied to the received models.

Schedules (topologies/schedules.py): in the rounds `merge_rounds` (a schedule's dense rounds) the
β-rule is not applied and the nodes mix with the scheduled topology's own W, so a final merge on
the complete graph is an exact average (with β it would keep β on the own model).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from dfl.algorithms import common, registry
from dfl.algorithms.base import Algorithm, RoundInputs, merge_flag
from dfl.hyperparameters import Hyperparameter, require
from dfl.algorithms.local_then_gossip import Mixer, local_then_gossip
from dfl.local import make_local_sgd, make_optimizer
from dfl.tracing import concrete
from dfl.mixing import DenseMixing, Mixing, SparseMixing, mix


AGGREGATION_WEIGHTS = ("uniform", "num_samples")


def gossip_learning_mixing(mixing: Mixing, self_weight: float,
                           num_samples_N: Optional[jax.Array] = None) -> Mixing:
  """W = β I + (1 - β) D⁻¹ A from the edge pattern of `mixing` (dense or sparse form, traced);
  with `num_samples_N`, row i weights its neighbours j by n_j / Σ_{j ∈ N(i)} n_j instead of 1/d_i
  (a node whose neighbours hold no samples keeps its model)."""
  beta = jnp.float32(self_weight)
  if isinstance(mixing, DenseMixing):
    W = mixing.W
    n = W.shape[0]
    eye_NxN = jnp.eye(n, dtype=jnp.float32)
    A_NxN = ((W != 0) & (eye_NxN == 0)).astype(jnp.float32)
    if num_samples_N is not None:
      A_NxN = A_NxN * jnp.asarray(num_samples_N, jnp.float32)[None, :]
    deg_N = A_NxN.sum(axis=1)
    alone_N = (deg_N == 0).astype(jnp.float32)
    neighbours_NxN = (1 - beta) * A_NxN / jnp.where(deg_N > 0, deg_N, 1)[:, None]
    return DenseMixing((beta + (1 - beta) * alone_N)[:, None] * eye_NxN + neighbours_NxN)
  idx_NxK, w_NxK = mixing.indices, mixing.weights
  n = idx_NxK.shape[0]
  self_N1 = jnp.arange(n, dtype=idx_NxK.dtype)[:, None]
  edge_NxK = ((w_NxK != 0) & (idx_NxK != self_N1)).astype(jnp.float32)
  if num_samples_N is not None:
    edge_NxK = edge_NxK * jnp.asarray(num_samples_N, jnp.float32)[idx_NxK]
  deg_N = edge_NxK.sum(axis=1)
  self_w_N1 = (beta + (1 - beta) * (deg_N == 0))[:, None]
  neighbour_w_NxK = (1 - beta) * edge_NxK / jnp.where(deg_N > 0, deg_N, 1)[:, None]
  # The node itself gets its own slot in front: the neighbour form may not list it.
  return SparseMixing(jnp.concatenate([self_N1, idx_NxK], axis=1),
                      jnp.concatenate([self_w_N1, neighbour_w_NxK], axis=1))


def _as_given(mixing: Mixing) -> Mixing:
  """The topology's own W in the shape `gossip_learning_mixing` returns (a leading self slot of
  weight 0 in the sparse form), so the two can be selected between inside jit."""
  if isinstance(mixing, DenseMixing):
    return mixing
  n = mixing.indices.shape[0]
  self_N1 = jnp.arange(n, dtype=mixing.indices.dtype)[:, None]
  return SparseMixing(jnp.concatenate([self_N1, mixing.indices], axis=1),
                      jnp.concatenate([jnp.zeros_like(mixing.weights[:, :1]), mixing.weights],
                                      axis=1))


def gossip_learning(loss_fn: Callable, *, lr: float, local_steps: int, batch_size: int,
                    self_weight: float = 0.5, momentum: float = 0.0, weight_decay: float = 0.0,
                    lr_decay: float = 1.0, mixer: Optional[Mixer] = None,
                    merge_rounds: Sequence[int] = (),
                    aggregation_weights: str = "uniform", clip_norm: Optional[float] = None,
                    augment: Optional[Callable] = None) -> Algorithm:
  """Gossip learning; `mixer` (one gossip step) defaults to plain averaging.

  Args:
    merge_rounds: rounds mixed with the topology's W as given (a schedule's dense rounds).
    aggregation_weights: "uniform" (the paper) or "num_samples" (received models weighted by
      their shard sizes, `RoundInputs.data.sizes`).
    clip_norm: clip each local gradient to this global L2 norm (None: no clipping).
    augment: augment(key, x_B) -> x_B applied to every local minibatch (None: none).
  """
  if concrete(self_weight) and not 0.0 <= self_weight < 1.0:
    raise ValueError(f"self_weight (β) must be in [0, 1), got {self_weight}; 1 would never gossip.")
  if aggregation_weights not in AGGREGATION_WEIGHTS:
    raise ValueError(f"Unknown algorithm.aggregation_weights={aggregation_weights!r}; valid: "
                     f"{list(AGGREGATION_WEIGHTS)}.")
  optimizer = make_optimizer(lr=lr, momentum=momentum, weight_decay=weight_decay,
                             clip_norm=clip_norm)
  local_sgd = make_local_sgd(loss_fn, optimizer, local_steps=local_steps, batch_size=batch_size,
                             augment=augment)
  step = mixer or mix
  # The round's effective W is chosen in round_fn below; the gossip step mixes with it as is.
  algorithm = local_then_gossip(local_sgd, optimizer, reset_optimizer=False, lr_decay=lr_decay,
                                mixer=step)

  def round_fn(state, inputs: RoundInputs):
    sizes_N = inputs.data.sizes if aggregation_weights == "num_samples" else None
    mixing = gossip_learning_mixing(inputs.mixing, self_weight, sizes_N)
    if merge_rounds:
      merging = merge_flag(inputs.round, merge_rounds)
      mixing = jax.tree.map(lambda given, own: jnp.where(merging, given, own),
                            _as_given(inputs.mixing), mixing)
    return algorithm.round(state, inputs._replace(mixing=mixing))

  return Algorithm(algorithm.init, round_fn)


SELF_WEIGHT = Hyperparameter(
    "self_weight", 0.5, batchable=True, doc="beta, the weight on the own model",
    check=lambda a: require(0 <= a.self_weight < 1, f"algorithm.self_weight must be in [0, 1) "
                            f"for gossip, got {a.self_weight}."))


@registry.register("gossip", uses_topology=True, uses_mixer=True, hyperparameters=(
    common.LR, common.LR_DECAY, common.LOCAL_STEPS, common.BATCH_SIZE, common.WEIGHT_DECAY,
    common.CLIP_NORM, common.MOMENTUM, common.AGGREGATION_WEIGHTS, SELF_WEIGHT))
def build(a, ctx) -> Algorithm:
  """Gossip learning's K local steps (no local_epochs: a node trains continuously)."""
  return gossip_learning(ctx.loss_fn, lr=a.lr, local_steps=registry.resolved(a, "local_steps"),
                         batch_size=a.batch_size, self_weight=a.self_weight,
                         momentum=registry.resolved(a, "momentum"),
                         weight_decay=a.weight_decay, lr_decay=a.lr_decay, mixer=ctx.mixer,
                         merge_rounds=ctx.merge_rounds,
                         aggregation_weights=a.aggregation_weights,
                         clip_norm=a.get("clip_norm"), augment=ctx.augment)
