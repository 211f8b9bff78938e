"""Variance-corrected model averaging (Tian, Al-Ars, Kitsak, Hofstee, "Vanishing Variance Problem
in Fully Decentralized Neural-Network Systems", arXiv 2404.04616).

Averaging d uncorrelated tensors of variance s^2 gives a tensor of variance s^2/d: gossip between
independently initialised models erodes the weight variance that Xavier/He initialisation set up,
and training slows down. After a gossip step x̂ = W x, node i rescales every averaged tensor l
about its own mean back to a target variance:

    x̂_i[l] <- m + s * (x̂_i[l] - m),     m = mean(x̂_i[l]),  v = Var(x̂_i[l])
    s = 1 + r * (sqrt(σ²_i[l] / v) - 1)

where mean and variance are scalars over all elements of the tensor, r = `strength` (1: full
correction, 0: plain gossip), and the target σ²_i[l] is (`target`):

    follow_others  Σ_{j≠i, w_ij>0} w_ij Var(x_j[l]) / Σ_{j≠i, w_ij>0} w_ij   (the paper's choice:
                   the mean variance of the models node i received, W-weighted)
    follow_self    Var(x_i[l]), node i's own tensor before averaging
    conservative   β Var(x_i[l]) + (1-β) follow_others,   β = `beta`

Rules made explicit:
* The mean of every tensor is unchanged; only its spread about the mean is rescaled.
* `tensors`: 'all' corrects every weight and bias; 'kernels' only leaves with >= 2 dimensions
  per node (dense and convolution kernels). Normalisation layers are never corrected: any leaf
  whose path names a `batch_stats` collection or a module with 'norm' in its name (BatchNorm_0,
  LayerNorm_0, ...). Their statistics are data, not initialised weights, and their scale/bias start
  at variance 0, so there is no initial variance to restore.
* `estimator`: 'population' (÷n) or 'unbiased' (÷(n-1)) over the n elements of a tensor. Target
  and current variance of a tensor use the same n, so the factor n/(n-1) cancels in σ²/v: the
  estimator only moves the `eps` threshold below.
* `eps`: a tensor whose averaged variance v is <= eps (a zero-initialised bias, a one-element
  tensor) is left as it is: it has no spread to rescale and σ/v would blow up.
* A node that received no model (no j ≠ i with w_ij > 0) takes its own variance as "others".

Everything is vectorised: per-node per-tensor variances form one [N, L] matrix, mixed with the
neighbour weights in one product; the Python loop over the pytree's leaves runs at trace time.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp

from dfl.mixing import DenseMixing, Mixing, SparseMixing, mix

PyTree = Any
TARGETS = ("follow_others", "follow_self", "conservative")
ESTIMATORS = ("population", "unbiased")
TENSORS = ("all", "kernels")
DEFAULT_EPS = 1e-12
_NORMALIZATION = re.compile(r"batch_stats|norm", re.IGNORECASE)


def _path_names(path) -> list[str]:
  names = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        names.append(str(getattr(entry, attr)))
        break
  return names


def is_normalization(path) -> bool:
  """True for a leaf of a normalisation layer (never corrected), by its pytree path."""
  return any(_NORMALIZATION.search(name) for name in _path_names(path))


def is_corrected(path, x_N: jax.Array, tensors: str) -> bool:
  """Whether the leaf at `path` (with a leading node axis) is variance-corrected."""
  if is_normalization(path):
    return False
  return tensors == "all" or x_N.ndim - 1 >= 2


def tensor_variance(x_N: jax.Array, estimator: str = "population") -> jax.Array:
  """[N]: the variance of each node's tensor over all its elements (÷n or ÷(n-1))."""
  x_NxD = x_N.reshape(x_N.shape[0], -1)
  n = x_NxD.shape[1]
  centred = x_NxD - jnp.mean(x_NxD, axis=1, keepdims=True)
  ss_N = jnp.sum(centred * centred, axis=1)
  return ss_N / (n if estimator == "population" else max(n - 1, 1))


def received_mean(mixing: Mixing, v_NxL: jax.Array) -> jax.Array:
  """[N, L]: Σ_{j≠i, w_ij>0} w_ij v_j / Σ_{j≠i, w_ij>0} w_ij; a node without neighbours keeps v_i."""
  if isinstance(mixing, DenseMixing):
    W = mixing.W
    A_NxN = jnp.where((W > 0) & ~jnp.eye(W.shape[0], dtype=bool), W, 0).astype(v_NxL.dtype)
    total_N = A_NxN.sum(axis=1)
    weighted_NxL = A_NxN @ v_NxL
  else:
    idx_NxK, w_NxK = mixing.indices, mixing.weights
    n = idx_NxK.shape[0]
    edge_NxK = (w_NxK > 0) & (idx_NxK != jnp.arange(n)[:, None])
    A_NxK = jnp.where(edge_NxK, w_NxK, 0).astype(v_NxL.dtype)
    total_N = A_NxK.sum(axis=1)
    weighted_NxL = jnp.einsum("nk,nkl->nl", A_NxK, v_NxL[idx_NxK])
  has_neighbours_N = total_N > 0
  safe_total_N = jnp.where(has_neighbours_N, total_N, 1)
  return jnp.where(has_neighbours_N[:, None], weighted_NxL / safe_total_N[:, None], v_NxL)


def check_options(*, target: str, beta: float, estimator: str, tensors: str, strength: float,
                  eps: float) -> None:
  """Raises ValueError naming the bad option and the valid values."""
  if target not in TARGETS:
    raise ValueError(f"Unknown target={target!r}; valid: {list(TARGETS)}.")
  if estimator not in ESTIMATORS:
    raise ValueError(f"Unknown estimator={estimator!r}; valid: {list(ESTIMATORS)}.")
  if tensors not in TENSORS:
    raise ValueError(f"Unknown tensors={tensors!r}; valid: {list(TENSORS)}.")
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"beta must be in [0, 1], got {beta}.")
  if not strength >= 0.0:
    raise ValueError(f"strength must be >= 0 (0: no correction, 1: full), got {strength}.")
  if not eps >= 0.0:
    raise ValueError(f"eps must be >= 0, got {eps}.")


def _as_mixing(W) -> Mixing:
  if isinstance(W, (DenseMixing, SparseMixing)):
    return W
  return DenseMixing(jnp.asarray(W))


def variance_corrected_mix(W: Union[jax.Array, Mixing], params: PyTree, *,
                           target: str = "follow_others", beta: float = 0.5,
                           estimator: str = "population", tensors: str = "all",
                           strength: float = 1.0, eps: float = DEFAULT_EPS) -> PyTree:
  """One gossip step x̂ = W x followed by the per-node, per-tensor variance correction.

  Args:
    W: the mixing matrix [N, N] (array or `DenseMixing`), or a `SparseMixing` neighbour form.
    params: pytree whose leaves have a leading node axis N: the models before averaging.
    target: 'follow_others' | 'follow_self' | 'conservative' (see the module docstring).
    beta: weight of the node's own variance in the 'conservative' target.
    estimator: 'population' (÷n) or 'unbiased' (÷(n-1)).
    tensors: 'all' (weights and biases) or 'kernels' (leaves with >= 2 dims per node).
    strength: r in s = 1 + r (σ_target / σ - 1); 1 = full correction, 0 = plain gossip.
    eps: tensors whose averaged variance is <= eps are left unchanged.

  Returns:
    The mixed and corrected pytree, same structure and shapes as `params`.
  """
  check_options(target=target, beta=beta, estimator=estimator, tensors=tensors,
                strength=strength, eps=eps)
  mixing = _as_mixing(W)
  mixed = mix(mixing, params)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  mixed_leaves = treedef.flatten_up_to(mixed)
  chosen = [k for k, (path, x) in enumerate(leaves) if is_corrected(path, x, tensors)]
  if not chosen:
    return mixed

  own_NxL = jnp.stack([tensor_variance(leaves[k][1].astype(jnp.float32), estimator)
                       for k in chosen], axis=1)
  if target == "follow_self":
    target_NxL = own_NxL
  else:
    others_NxL = received_mean(mixing, own_NxL)
    target_NxL = others_NxL if target == "follow_others" else beta * own_NxL + (1 - beta) * others_NxL

  out = list(mixed_leaves)
  for column, k in enumerate(chosen):
    x_N = mixed_leaves[k]
    x_NxD = x_N.reshape(x_N.shape[0], -1).astype(jnp.float32)
    v_N = tensor_variance(x_NxD, estimator)
    spread = v_N > eps
    ratio_N = jnp.sqrt(target_NxL[:, column] / jnp.where(spread, v_N, 1.0))
    scale_N = jnp.where(spread, 1.0 + strength * (ratio_N - 1.0), 1.0)
    m_N1 = jnp.mean(x_NxD, axis=1, keepdims=True)
    corrected = m_N1 + scale_N[:, None] * (x_NxD - m_N1)
    out[k] = corrected.reshape(x_N.shape).astype(x_N.dtype)
  return jax.tree_util.tree_unflatten(treedef, out)


def variance_corrected_mixer(**options) -> Callable[[Mixing, PyTree], PyTree]:
  """A gossip-step mixer `mixer(mixing, params)` for `local_then_gossip` (options as above).

  With Q gossip steps per round, the algorithm applies it Q times: every exchange averages the
  models just received and is corrected against their variances.
  """
  check_options(**{"target": "follow_others", "beta": 0.5, "estimator": "population",
                   "tensors": "all", "strength": 1.0, "eps": DEFAULT_EPS, **options})
  return lambda mixing, params: variance_corrected_mix(mixing, params, **options)


def build_mixer(section) -> Optional[Callable[[Mixing, PyTree], PyTree]]:
  """The mixer selected by the config's `variance_correction` section; None = plain gossip."""
  if section is None or not section.enabled:
    return None
  return variance_corrected_mixer(target=section.target, beta=float(section.beta),
                                  estimator=section.estimator, tensors=section.tensors,
                                  strength=float(section.strength), eps=float(section.eps))


def layer_variances(params: PyTree, estimator: str = "population") -> dict[str, jax.Array]:
  """{'Dense_0/kernel': [N] per-node variance, ...} for every leaf: the vanishing-variance probe."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  return {"/".join(_path_names(path)): tensor_variance(x, estimator) for path, x in leaves}
