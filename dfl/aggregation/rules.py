"""Aggregation rules: how a node combines its own model with the models it received.

Every rule is a per-node function, written without the node axis and vmapped over the nodes:

    rule(key, x_KxD, w_K, valid_K, t) -> x_D

over the node's neighbourhood as K slots: slot 0 is the node's own model x_i (always valid,
weight w_ii), the other slots the models received from its neighbours j (valid where w_ij != 0,
j != i). Each model is the node's whole pytree flattened to one vector of D floats. Both mixing
forms give this view (`neighbourhood`): the dense W [N, N] lists every node in row i (K = N + 1,
the diagonal moved to slot 0), the neighbour form (indices/weights [N, K']) its K' slots plus
the self slot (padded slots, weight 0 pointing at the node itself, are invalid). A rule that
sorts or selects therefore gives the same answer on both forms.

    mean            Σ_j w_ij x_j, routed to `dfl.mixing.mix` itself (bit for bit today's gossip)
    median          coordinate-wise median of the m valid slots (even m: mean of the two middle
                    values), unweighted, as DeCM in the reference
    trimmed_mean    per coordinate, drop the b smallest and b largest of the m valid values and
                    average the rest with their mixing weights, renormalised:
                    Σ_kept w_ij x_j / Σ_kept w_ij (trim = b, a count >= 1, or a fraction < 1 of
                    m, b = floor(trim * m)); b = 0 is plain gossip for any W
    krum            Krum / multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017):
                    score(j) = sum of the m - f - 2 smallest squared distances from x_j to the
                    other valid slots; the output is the uniform mean of the `multi_krum_m`
                    lowest-scored slots (1: Krum)
    clipped_gossip  self-centred clipping (He, Karimireddy, Jaggi 2022, "Byzantine-robust
                    decentralized learning via ClippedGossip"):
                    x_i <- x_i + Σ_{j != i} w_ij CLIP(x_j - x_i, τ_i),  CLIP(z, τ) = min(1, τ/‖z‖) z;
                    τ_i = clip_radius, or (None) the reference's adaptive choice: the
                    second-largest ‖x_j - x_i‖ over the neighbours (the largest with one)
    balance         BALANCE (Fang, Zhang, Hairi, Khanduri, Liu, Lu, Liu, Gong, CCS 2024,
                    "Byzantine-Robust Decentralized Federated Learning", arXiv 2406.10416):
                    node i accepts x_j if ‖x_j - x_i‖ <= γ exp(-κ λ(t)) ‖x_i‖, λ(t) = t / T, and
                    sets x_i <- α x_i + (1 - α) mean(accepted) (keeps x_i if none is accepted)

A rule of one's own: `aggregation.rule="package.module:my_rule"` names a function with the
signature above (dfl/imports.py); it is vmapped over the nodes like the built-in ones.

Reference code followed: github.com/epfml/byzantine-robust-decentralized-optimizer,
codes/aggregator.py (DeCM, DeTM, DeKrum / multi_krum, SelfCenteredClipping). Deviations:
* trimmed_mean weights the kept values by w_ij (DeTM: unweighted over [self] + neighbours; the
  two agree when the neighbourhood's weights are equal, e.g. Metropolis-Hastings on a regular
  graph), so that b = 0 is exactly gossip on any graph.
* multi-Krum averages the selected models (Blanchard et al.); the reference's Krum sums them
  (there it aggregates gradients with m = 1).
* A neighbourhood too small for the configured trim / Krum f is refused when the run is built
  (`check_neighbourhoods`, on the graph of round 0); a smaller one met later (a time-varying
  graph) is handled as the reference's DeTM does: b is lowered until one value is left, and
  Krum scores with at least one distance.
* BALANCE: the acceptance test and update follow the paper's description; its defaults
  γ = 0.3, κ = 1, α = 0.5 are this module's, not checked against an authors' implementation
  (none was read); T is train.rounds.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dfl.imports import is_import_path, resolve
from dfl.mixing import DenseMixing, Mixing, mix

PyTree = Any
RULES = ("mean", "median", "trimmed_mean", "krum", "clipped_gossip", "balance")


class Rule(NamedTuple):
  name: str
  # fn(key, x_KxD, w_K, valid_K, t) -> x_D on one node's neighbourhood (slot 0 = the node)
  fn: Optional[Callable]


def neighbourhood(mixing: Mixing) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(indices [N, K], weights [N, K], valid [N, K]): slot 0 the node itself with its own weight
  w_ii, the others its neighbours (valid where w_ij != 0 and j != i), for either mixing form."""
  if isinstance(mixing, DenseMixing):
    W_NxN = mixing.W
    n = W_NxN.shape[0]
    eye_NxN = jnp.eye(n, dtype=bool)
    idx_NxK = jnp.concatenate([jnp.arange(n)[:, None], jnp.tile(jnp.arange(n), (n, 1))], axis=1)
    w_NxK = jnp.concatenate([jnp.diagonal(W_NxN)[:, None], jnp.where(eye_NxN, 0, W_NxN)], axis=1)
    valid_NxK = jnp.concatenate([jnp.ones((n, 1), bool), (W_NxN != 0) & ~eye_NxN], axis=1)
    return idx_NxK.astype(jnp.int32), w_NxK, valid_NxK
  idx, w = mixing.indices, mixing.weights
  n = idx.shape[0]
  self_N1 = jnp.arange(n, dtype=idx.dtype)[:, None]
  is_self = idx == self_N1
  self_w_N1 = jnp.sum(jnp.where(is_self, w, 0), axis=1, keepdims=True)
  idx_NxK = jnp.concatenate([self_N1, idx], axis=1).astype(jnp.int32)
  w_NxK = jnp.concatenate([self_w_N1, jnp.where(is_self, 0, w)], axis=1)
  valid_NxK = jnp.concatenate([jnp.ones((n, 1), bool), (w != 0) & ~is_self], axis=1)
  return idx_NxK, w_NxK, valid_NxK


def neighbourhood_sizes(W_NxN: np.ndarray) -> np.ndarray:
  """[N] m_i = 1 + |{j != i: w_ij != 0}| of a dense numpy W (for the build-time checks)."""
  W = np.asarray(W_NxN)
  off = (W != 0) & ~np.eye(W.shape[0], dtype=bool)
  return 1 + off.sum(axis=1)


# ---------------------------------------------------------------- flattening node models


def flatten_nodes(tree: PyTree) -> tuple[jax.Array, Callable]:
  """[N, D] float32 (every leaf of a node's model, raveled and concatenated) and its inverse."""
  leaves, treedef = jax.tree.flatten(tree)
  n = leaves[0].shape[0]
  sizes = [int(np.prod(x.shape[1:])) for x in leaves]
  x_NxD = jnp.concatenate([x.reshape(n, -1).astype(jnp.float32) for x in leaves], axis=1)

  def unflatten(y_NxD):
    out, start = [], 0
    for x, size in zip(leaves, sizes):
      out.append(y_NxD[:, start:start + size].reshape(x.shape).astype(x.dtype))
      start += size
    return jax.tree.unflatten(treedef, out)
  return x_NxD, unflatten


# ---------------------------------------------------------------- per-node rules


def median(key, x_KxD, w_K, valid_K, t):
  del key, w_K, t
  m = jnp.sum(valid_K)
  s_KxD = jnp.sort(jnp.where(valid_K[:, None], x_KxD, jnp.inf), axis=0)
  return (s_KxD[(m - 1) // 2] + s_KxD[m // 2]) / 2


def trim_count(trim: float, m: jax.Array) -> jax.Array:
  """b values dropped per side: `trim` itself when >= 1 (a count), floor(trim * m) below 1."""
  if trim >= 1:
    return jnp.asarray(int(trim), jnp.int32)
  return jnp.floor(trim * m.astype(jnp.float32) + 1e-6).astype(jnp.int32)


def make_trimmed_mean(trim: float) -> Callable:
  def trimmed_mean(key, x_KxD, w_K, valid_K, t):
    del key, t
    k = x_KxD.shape[0]
    m = jnp.sum(valid_K)
    b = jnp.minimum(trim_count(trim, m), (m - 1) // 2)  # at least one value is kept
    order_KxD = jnp.argsort(jnp.where(valid_K[:, None], x_KxD, jnp.inf), axis=0)
    xs_KxD = jnp.take_along_axis(x_KxD, order_KxD, axis=0)
    ws_KxD = w_K.astype(x_KxD.dtype)[order_KxD]
    rank_K1 = jnp.arange(k)[:, None]
    keep_KxD = (rank_K1 >= b) & (rank_K1 < m - b)
    wk_KxD = jnp.where(keep_KxD, ws_KxD, 0)
    total_D = wk_KxD.sum(axis=0)
    weighted_D = jnp.sum(wk_KxD * jnp.where(keep_KxD, xs_KxD, 0), axis=0)
    # Kept values whose weights are all 0 (a self slot of weight 0 left alone): plain mean.
    plain_D = jnp.sum(jnp.where(keep_KxD, xs_KxD, 0), axis=0) / jnp.sum(keep_KxD, axis=0)
    return jnp.where(total_D > 0, weighted_D / jnp.where(total_D > 0, total_D, 1), plain_D)
  return trimmed_mean


def make_krum(f: int, multi_m: int) -> Callable:
  def krum(key, x_KxD, w_K, valid_K, t):
    del key, w_K, t
    k = x_KxD.shape[0]
    m = jnp.sum(valid_K)
    gram_KxK = x_KxD @ x_KxD.T
    sq_K = jnp.diagonal(gram_KxK)
    d2_KxK = jnp.maximum(sq_K[:, None] + sq_K[None, :] - 2 * gram_KxK, 0)
    pair_KxK = valid_K[:, None] & valid_K[None, :] & ~jnp.eye(k, dtype=bool)
    s_KxK = jnp.sort(jnp.where(pair_KxK, d2_KxK, jnp.inf), axis=1)
    closest = jnp.maximum(m - f - 2, 1)
    score_K = jnp.sum(jnp.where(jnp.arange(k)[None, :] < closest, s_KxK, 0), axis=1)
    score_K = jnp.where(valid_K, score_K, jnp.inf)
    rank_K = jnp.argsort(jnp.argsort(score_K))  # stable: ties go to the lower slot
    chosen_K = (rank_K < jnp.minimum(multi_m, m)) & valid_K
    return jnp.sum(jnp.where(chosen_K[:, None], x_KxD, 0), axis=0) / jnp.sum(chosen_K)
  return krum


def make_clipped_gossip(clip_radius: Optional[float]) -> Callable:
  def clipped_gossip(key, x_KxD, w_K, valid_K, t):
    del key, t
    k = x_KxD.shape[0]
    z_KxD = x_KxD - x_KxD[0]
    norm_K = jnp.sqrt(jnp.sum(z_KxD * z_KxD, axis=1))
    neighbour_K = valid_K & (jnp.arange(k) != 0)
    if clip_radius is None:  # the reference's adaptive τ: second-largest neighbour distance
      desc_K = -jnp.sort(-jnp.where(neighbour_K, norm_K, -jnp.inf))
      tau = jnp.where(jnp.sum(neighbour_K) >= 2, desc_K[1], desc_K[0])
    else:
      tau = jnp.asarray(clip_radius, x_KxD.dtype)
    scale_K = jnp.where(norm_K > tau, tau / jnp.where(norm_K > 0, norm_K, 1), 1)
    coef_K = jnp.where(neighbour_K, w_K.astype(x_KxD.dtype) * scale_K, 0)
    return x_KxD[0] + coef_K @ z_KxD
  return clipped_gossip


def make_balance(gamma: float, kappa: float, alpha: float, num_rounds: int) -> Callable:
  def balance(key, x_KxD, w_K, valid_K, t):
    del key, w_K
    k = x_KxD.shape[0]
    x0_D = x_KxD[0]
    dist_K = jnp.sqrt(jnp.sum((x_KxD - x0_D) ** 2, axis=1))
    lam = jnp.asarray(t, jnp.float32) / num_rounds
    threshold = gamma * jnp.exp(-kappa * lam) * jnp.sqrt(jnp.sum(x0_D * x0_D))
    accept_K = valid_K & (jnp.arange(k) != 0) & (dist_K <= threshold)
    count = jnp.sum(accept_K)
    mean_D = jnp.sum(jnp.where(accept_K[:, None], x_KxD, 0), axis=0) / jnp.maximum(count, 1)
    return jnp.where(count > 0, alpha * x0_D + (1 - alpha) * mean_D, x0_D)
  return balance


# ---------------------------------------------------------------- the whole-state step


def aggregate(rule: Rule, mixing: Mixing, own: PyTree, sent: Optional[PyTree] = None,
              key: Optional[jax.Array] = None, t: Any = 0) -> PyTree:
  """One aggregation step on every node: node i combines its own model own[i] with the models
  sent[j] of its neighbours (sent defaults to own: nobody lies).

  `mean` is exactly `dfl.mixing.mix(mixing, sent)` (for an honest node sent[i] = own[i]).
  """
  sent = own if sent is None else sent
  if rule.fn is None:
    return mix(mixing, sent)
  idx_NxK, w_NxK, valid_NxK = neighbourhood(mixing)
  own_NxD, unflatten = flatten_nodes(own)
  sent_NxD, _ = flatten_nodes(sent)
  x_NxKxD = sent_NxD[idx_NxK].at[:, 0].set(own_NxD)
  n = own_NxD.shape[0]
  key = jax.random.key(0) if key is None else key
  keys_N = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(n))
  out_NxD = jax.vmap(rule.fn, in_axes=(0, 0, 0, 0, None))(keys_N, x_NxKxD, w_NxK, valid_NxK, t)
  return unflatten(out_NxD)


def build_rule(section, *, num_rounds: int = 1) -> Rule:
  """The rule named by the config's `aggregation` section (None or absent: mean)."""
  name = "mean" if section is None else section.rule
  check_section(section)
  if is_import_path(name):
    fn = resolve(name, "aggregation.rule")
    if not callable(fn):
      raise ValueError(f"aggregation.rule={name!r} names a {type(fn).__name__}, not a function "
                       "rule(key, x_KxD, w_K, valid_K, t) -> x_D.")
    return Rule(name, fn)
  if name == "mean":
    return Rule("mean", None)
  if name == "median":
    return Rule(name, median)
  if name == "trimmed_mean":
    return Rule(name, make_trimmed_mean(float(section.trim)))
  if name == "krum":
    return Rule(name, make_krum(int(section.krum_f), int(section.multi_krum_m)))
  if name == "clipped_gossip":
    radius = section.clip_radius
    return Rule(name, make_clipped_gossip(None if radius is None else float(radius)))
  return Rule(name, make_balance(float(section.balance_gamma), float(section.balance_kappa),
                                 float(section.balance_alpha), max(int(num_rounds), 1)))


def check_section(section) -> None:
  """Raises ValueError naming the bad field of the `aggregation` section."""
  if section is None:
    return
  if section.rule not in RULES and not is_import_path(section.rule):
    raise ValueError(f"Unknown aggregation.rule={section.rule!r}; valid: {list(RULES)} or an "
                     "import path 'package.module:rule'.")
  trim = section.trim
  if not (trim >= 0 and (trim < 1 or float(trim).is_integer())):
    raise ValueError(f"aggregation.trim must be a count (an integer >= 1) or a fraction in "
                     f"[0, 1) of each neighbourhood, got {trim}.")
  for field in ("krum_f", "multi_krum_m"):
    value = section[field]
    low = 0 if field == "krum_f" else 1
    if not (isinstance(value, int) and value >= low):
      raise ValueError(f"aggregation.{field} must be an integer >= {low}, got {value!r}.")
  radius = section.clip_radius
  if radius is not None and not radius > 0:
    raise ValueError(f"aggregation.clip_radius must be > 0, or None (adaptive), got {radius}.")
  if not section.balance_gamma > 0:
    raise ValueError(f"aggregation.balance_gamma must be > 0, got {section.balance_gamma}.")
  if not section.balance_kappa >= 0:
    raise ValueError(f"aggregation.balance_kappa must be >= 0, got {section.balance_kappa}.")
  if not 0 <= section.balance_alpha < 1:
    raise ValueError(f"aggregation.balance_alpha must be in [0, 1), got "
                     f"{section.balance_alpha}.")


def check_neighbourhoods(section, sizes_N: np.ndarray) -> None:
  """Refuses a trim or Krum f too large for the smallest neighbourhood (self included)."""
  if section is None:
    return
  sizes_N = np.asarray(sizes_N)
  m = int(sizes_N.min())
  node = int(sizes_N.argmin())
  if section.rule == "trimmed_mean":
    trim = float(section.trim)
    bs = np.full(len(sizes_N), int(trim)) if trim >= 1 else np.floor(trim * sizes_N + 1e-6)
    bad = np.flatnonzero(sizes_N - 2 * bs < 1)
    if bad.size:
      i = int(bad[0])
      raise ValueError(f"aggregation.trim={section.trim} trims {int(bs[i])} models per side, but "
                       f"node {i} aggregates only {int(sizes_N[i])} (itself and "
                       f"{int(sizes_N[i]) - 1} neighbours): nothing would be left; use "
                       f"aggregation.trim <= {(int(sizes_N[i]) - 1) // 2}.")
  if section.rule == "krum":
    f, multi_m = int(section.krum_f), int(section.multi_krum_m)
    if m - f - 2 < 1:
      raise ValueError(f"aggregation.krum_f={f} needs every neighbourhood to hold at least "
                       f"f + 3 = {f + 3} models (Krum scores m - f - 2 distances), but node "
                       f"{node} aggregates only {m} (itself and {m - 1} neighbours); use "
                       f"aggregation.krum_f <= {max(m - 3, 0)}.")
    if multi_m > m:
      raise ValueError(f"aggregation.multi_krum_m={multi_m} exceeds the {m} models node {node} "
                       f"aggregates; use aggregation.multi_krum_m <= {m}.")
