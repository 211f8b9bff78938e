"""CHOCO-SGD (Koloskova, Stich, Jaggi, "Decentralized Stochastic Optimization and Gossip
Algorithms with Compressed Communication", ICML 2019, Algorithm 2).

Every node i keeps its model x_i and the public copies x̂_j of itself and its neighbours (all
start at 0), and sends only compressed differences. Per round t:

    x_i^{t+1/2} = x_i^t - eta_t * grad F_i(x_i^t; xi_i^t)       (K local steps; K = 1 by default)
    q_i^t = Q(x_i^{t+1/2} - x̂_i^t)                              sent to every neighbour
    x̂_j^{t+1} = x̂_j^t + q_j^t                                   for j = i and i's neighbours
    x_i^{t+1} = x_i^{t+1/2} + gamma * sum_j w_ij (x̂_j^{t+1} - x̂_i^{t+1})

Symbols: gamma = `consensus_step` (`algorithm.consensus_step`), Q = the compressor
(`dfl.aggregation.compressors`: identity, top_k, random_k, qsgd, sign), W the topology's mixing
matrix. Every node's copy of x̂_j is the same array here (every neighbour of j receives the same
q_j), so the state holds one x̂ per node: `x_hat` [N, ...]; sum_j w_ij x̂_j is one gossip step
`mix(W, x_hat)`. With Q = identity and gamma = 1, x̂^{t+1} = x^{t+1/2} and the round is
x^{t+1} = W x^{t+1/2}: D-PSGD in this repository's adapt-then-combine form (dfl/algorithms/
dpsgd.py). Communication: each node sends one message q_i per neighbour per round, of
`tree_message_bytes(Q, model)` bytes (values in their dtype, int32 indices, packed bits and
norms; see the compressor table).

Reference code: github.com/epfml/ChocoSGD, dl_code/pcode/optim/parallel_choco.py (x̂ initialised
to zeros, compression per parameter tensor, `consensus_stepsize` default 0.9) and
convex_code/logistic.py (`method == "choco"`). The local optimizer (momentum, weight decay) is
the one every gossip algorithm here uses, kept across rounds as in the reference's
`apply_gradient`; random compressors draw from fold_in(node key of the round, COMPRESS_STREAM).

Deviations: both reference files use the pipelined order of the ICLR 2020 follow-up (Koloskova
et al., "Decentralized Deep Learning with Arbitrary Communication Compression", Algorithm 1):
the gossip step uses the copies x̂^t of the previous round, x^{t+1} = x^{t+1/2} + gamma (W - I)
x̂^t, and the difference is compressed afterwards, q = Q(x^{t+1} - x̂^t); this module follows
Algorithm 2 of the ICML paper (compress, then gossip with the updated copies). CHOCO assumes a
fixed graph (a node holds copies of its neighbours only); time-varying topologies and schedules
are refused.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from dfl.aggregation.compressors import (COMPRESSORS, Compressor, compress_tree,
                                         make_compressor, tree_message_bytes)
from dfl.algorithms import common, registry
from dfl.algorithms.base import Algorithm, RoundInputs, RoundMetrics, node_keys
from dfl.hyperparameters import Hyperparameter, require
from dfl.algorithms.local_then_gossip import run_local_phase
from dfl.execution import node_map
from dfl.local import AugmentFn, make_local_sgd, make_optimizer
from dfl.mixing import messages_per_step, mix

PyTree = object
COMPRESS_STREAM = 2**31 - 5  # fold_in tag of the compressors' keys, apart from the batch keys
PAPER_CONSENSUS_STEP = 0.9  # the reference's --consensus_stepsize default


class ChocoState(NamedTuple):
  params: PyTree  # [N, ...] node models x_i
  x_hat: PyTree  # [N, ...] public copies x̂_i (what the neighbours hold of node i)
  opt_state: PyTree  # [N, ...] local optimizer state


def choco(loss_fn: Callable, compressor: Compressor, *, lr: float, batch_size: int,
          consensus_step: float = PAPER_CONSENSUS_STEP, local_steps: int = 1,
          momentum: float = 0.0, weight_decay: float = 0.0, lr_decay: float = 1.0,
          num_steps_N: Optional[jax.Array] = None, clip_norm: Optional[float] = None,
          augment: Optional[AugmentFn] = None, max_epochs: Optional[int] = None) -> Algorithm:
  """Builds CHOCO-SGD.

  Args:
    loss_fn: loss(params, x_B, y_B, mask_B) of one node's minibatch.
    compressor: Q (`dfl.aggregation.compressors.make_compressor`).
    lr, batch_size, local_steps, momentum, weight_decay, lr_decay, num_steps_N, clip_norm,
      augment, max_epochs: the local phase, as in `dfl.algorithms.dpsgd.dpsgd`.
    consensus_step: gamma in (0, 1].
  """
  if not 0 < consensus_step <= 1:
    raise ValueError(f"algorithm.consensus_step (CHOCO's gamma) must be in (0, 1], got "
                     f"{consensus_step}.")
  optimizer = make_optimizer(lr=lr, momentum=momentum, weight_decay=weight_decay,
                             clip_norm=clip_norm)
  local_sgd = make_local_sgd(loss_fn, optimizer, local_steps=local_steps, batch_size=batch_size,
                             augment=augment, max_epochs=max_epochs)
  gamma = float(consensus_step)

  def init(params_N):
    return ChocoState(params_N, jax.tree.map(jnp.zeros_like, params_N),
                      jax.vmap(optimizer.init)(params_N))

  def compress_node(diff, key):
    return compress_tree(compressor, jax.random.fold_in(key, COMPRESS_STREAM), diff)

  def round_fn(state: ChocoState, inputs: RoundInputs):
    n = jax.tree.leaves(state.params)[0].shape[0]
    keys = node_keys(inputs.key, n)
    lr_scale = jnp.asarray(lr_decay, jnp.float32) ** inputs.round
    x_half, opt_state, loss_N = run_local_phase(local_sgd, state.params, state.opt_state, keys,
                                                inputs.data, lr_scale, num_steps_N)
    diff = jax.tree.map(jnp.subtract, x_half, state.x_hat)
    q = node_map(compress_node, in_axes=(0, 0))(diff, keys)
    x_hat = jax.tree.map(jnp.add, state.x_hat, q)
    mixed = mix(inputs.mixing, x_hat)
    params = jax.tree.map(lambda x, m, h: x + gamma * (m - h), x_half, mixed, x_hat)
    sent_N, received_N = messages_per_step(inputs.mixing)
    one_node = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), state.params)
    metrics = RoundMetrics(loss=loss_N.mean(), transfers=sent_N.sum(), sent_N=sent_N,
                           received_N=received_N,
                           message_bytes=tree_message_bytes(compressor, one_node))
    return ChocoState(params, x_hat, opt_state), metrics

  return Algorithm(init, round_fn)


def _only_choco(field: str, default):
  """Refuses a CHOCO field set for another algorithm."""
  def if_unused(a, name, users):
    if a.get(field, default) == default:
      return None
    return (f"algorithm.{field}={a.get(field)!r} is only used by algorithm.name='choco', not "
            f"{name!r}; leave it at {default!r}.")
  return if_unused


def _choco_field(name: str, default, doc: str) -> Hyperparameter:
  return Hyperparameter(name, default, doc=doc, if_unused=_only_choco(name, default))


COMPRESSOR = _choco_field("compressor", "identity",
                          "Q: identity | top_k | random_k | qsgd | sign, per parameter tensor")
COMPRESSION_RATIO = _choco_field("compression_ratio", 0.1,
                                 "top_k / random_k: the fraction of entries kept")
QUANTIZATION_LEVELS = _choco_field("quantization_levels", 16, "qsgd: s, the levels per sign")
CONSENSUS_STEP = _choco_field("consensus_step", PAPER_CONSENSUS_STEP,
                              "gamma, x += gamma * sum_j w_ij (x_hat_j - x_hat_i)")


def _check(a, num_nodes: int) -> None:
  require(a.compressor in COMPRESSORS,
          f"Unknown algorithm.compressor={a.compressor!r}; valid: {sorted(COMPRESSORS)}.")
  require(0 < a.compression_ratio <= 1,
          f"algorithm.compression_ratio must be in (0, 1] (the fraction of entries kept), got "
          f"{a.compression_ratio}.")
  require(a.compressor in ("top_k", "random_k")
          or a.compression_ratio == COMPRESSION_RATIO.default,
          f"algorithm.compression_ratio={a.compression_ratio} is only used by the compressors "
          f"top_k and random_k, not algorithm.compressor={a.compressor!r}; leave it at "
          f"{COMPRESSION_RATIO.default}.")
  require(isinstance(a.quantization_levels, int) and a.quantization_levels >= 1,
          f"algorithm.quantization_levels must be an integer >= 1 (QSGD's s), got "
          f"{a.quantization_levels!r}.")
  require(a.compressor == "qsgd" or a.quantization_levels == QUANTIZATION_LEVELS.default,
          f"algorithm.quantization_levels={a.quantization_levels} is only used by "
          f"algorithm.compressor='qsgd', not {a.compressor!r}; leave it at "
          f"{QUANTIZATION_LEVELS.default}.")
  require(0 < a.consensus_step <= 1,
          f"algorithm.consensus_step (CHOCO's gamma) must be in (0, 1], got {a.consensus_step}.")


@registry.register("choco", check=_check, uses_topology=True, static_topology_only=True,
                   hyperparameters=(*common.local_update(common.ONE_LOCAL_STEP), common.MOMENTUM,
                                    COMPRESSOR, COMPRESSION_RATIO, QUANTIZATION_LEVELS,
                                    CONSENSUS_STEP))
def build(a, ctx) -> Algorithm:
  compressor = make_compressor(a.compressor, ratio=a.compression_ratio,
                               levels=a.quantization_levels)
  return choco(ctx.loss_fn, compressor, consensus_step=a.consensus_step,
               momentum=registry.resolved(a, "momentum"), **common.local_options(a, ctx))
