"""Everything that crosses nodes: gossip mixing, node means, consensus distance.

All functions act on whole `[N, ...]` pytrees. The mixing operator is data (a traced argument),
never a static value, so a time-varying graph never triggers recompilation:

* `DenseMixing(W)`: x_i <- sum_j W[i, j] x_j, one `[N, N] @ [N, D]` product per leaf.
* `SparseMixing(indices, weights)`: x_i <- sum_k weights[i, k] x_{indices[i, k]}, a gather of the
  K neighbours (self included) per node; cost grows with edges, not N^2. Padded slots carry
  weight 0 and point at the node itself.
"""
from __future__ import annotations

from typing import NamedTuple, Union

import jax
import jax.numpy as jnp

PyTree = object


class DenseMixing(NamedTuple):
  W: jax.Array  # [N, N]


class SparseMixing(NamedTuple):
  indices: jax.Array  # [N, K] int32
  weights: jax.Array  # [N, K]


Mixing = Union[DenseMixing, SparseMixing]


def mix(mixing: Mixing, tree: PyTree) -> PyTree:
  """One gossip step x <- W x on every leaf of a node-axis pytree."""
  if isinstance(mixing, DenseMixing):
    W_NxN = mixing.W

    def dense(x_N):
      x_NxD = x_N.reshape(x_N.shape[0], -1)
      # HIGHEST: float32 products on GPU/TPU too (TF32 / bfloat16 would perturb the weights).
      return jnp.dot(W_NxN.astype(x_NxD.dtype), x_NxD,
                     precision=jax.lax.Precision.HIGHEST).reshape(x_N.shape)
    return jax.tree.map(dense, tree)

  idx_NxK = mixing.indices

  def sparse(x_N):
    # One row gather and multiply-add per neighbour slot: XLA fuses these into a single pass
    # over the output; an einsum over [N, K, D] would become N tiny batched dots on CPU.
    x_NxD = x_N.reshape(x_N.shape[0], -1)
    w_NxK = mixing.weights.astype(x_NxD.dtype)
    out_NxD = sum(w_NxK[:, k, None] * x_NxD[idx_NxK[:, k]] for k in range(idx_NxK.shape[1]))
    return out_NxD.reshape(x_N.shape)
  return jax.tree.map(sparse, tree)


def mix_steps(mixing: Mixing, tree: PyTree, steps: int) -> PyTree:
  """`steps` successive gossip steps (x <- W^steps x), each a real exchange between neighbours."""
  for _ in range(steps):
    tree = mix(mixing, tree)
  return tree


def messages_per_step(mixing: Mixing) -> tuple[jax.Array, jax.Array]:
  """Model transfers in one gossip step: (sent [N], received [N]) per node.

  Node i receives x_j from every j != i with W[i, j] != 0, so j sends one model to each such i.
  """
  if isinstance(mixing, DenseMixing):
    W = mixing.W
    edge_NxN = (W != 0) & ~jnp.eye(W.shape[0], dtype=bool)
    return edge_NxN.sum(axis=0, dtype=jnp.int32), edge_NxN.sum(axis=1, dtype=jnp.int32)
  n = mixing.indices.shape[0]
  edge_NxK = ((mixing.weights != 0) & (mixing.indices != jnp.arange(n)[:, None])).astype(jnp.int32)
  sent_N = jnp.zeros(n, jnp.int32).at[mixing.indices].add(edge_NxK)
  return sent_N, edge_NxK.sum(axis=1)


def node_average(tree: PyTree, w_N: jax.Array | None = None) -> PyTree:
  """sum_i w_i x_i over the node axis (w_N None: the mean, w_i = 1/N), leaves without it.

  One matrix-vector product per leaf, not a reduction: XLA:CPU reduces over the leading axis of
  an [N, D] array about 50x slower than it multiplies by a vector (N = 1024 MLPs, 156,800 floats
  each: 1.97 s against 0.039 s; docs/performance.md). HIGHEST precision keeps the sum in float32
  where a GPU or TPU would otherwise use TF32 / bfloat16 products.
  """
  def one(x_N):
    n = x_N.shape[0]
    dtype = jnp.promote_types(x_N.dtype, jnp.float32)  # bfloat16 leaves: weights and sum in f32
    w = jnp.full((n,), 1.0 / n, dtype) if w_N is None else w_N.astype(dtype)
    out = jnp.dot(w, x_N.reshape(n, -1).astype(dtype), precision=jax.lax.Precision.HIGHEST)
    return out.reshape(x_N.shape[1:]).astype(x_N.dtype)
  return jax.tree.map(one, tree)


def node_mean(tree: PyTree) -> PyTree:
  """x̄ = (1/N) sum_i x_i, leaves without the node axis (`node_average`)."""
  return node_average(tree)


def consensus_distance(tree: PyTree) -> jax.Array:
  """(1/N) sum_i ||x_i - x̄||^2, summed over all parameters."""
  def per_leaf(x):
    d = x - node_mean(x)[None]
    return jnp.sum(d * d)
  n = jax.tree.leaves(tree)[0].shape[0]
  return sum(per_leaf(x) for x in jax.tree.leaves(tree)) / n


def tree_bytes(tree: PyTree) -> int:
  """Bytes of one node's model (leaves without the node axis)."""
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))
