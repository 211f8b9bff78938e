"""Variance-corrected model averaging (Tian, Al-Ars, Kitsak, Hofstee, "Vanishing Variance Problem
in Fully Decentralized Neural-Network Systems", arXiv 2404.04616), checked against the authors'
DFL_torch, py_src/model_variance_correct.py (VarianceCorrector) as called by
py_src/model_average.py (ConservativeModelAverager) and py_src/config_file_util/default_config.py.

Averaging d uncorrelated tensors of variance s^2 gives a tensor of variance s^2/d: gossip between
independently initialised models erodes the weight variance that Xavier/He initialisation set up,
and training slows down. After a gossip step x̂ = W x, node i rescales every averaged tensor l
about its own mean back to a target variance:

    x̂_i[l] <- m + s * (x̂_i[l] - m),     m = mean(x̂_i[l]),  v = Var(x̂_i[l])
    s = 1 + r * (ratio - 1)
    ratio = sqrt(σ²_i[l] / v)                  eps_mode='threshold' (v <= eps: s = 1)
    ratio = sqrt((σ²_i[l] + eps) / (v + eps))  eps_mode='additive' (DFL_torch, eps = 1e-4)

where mean and variance are scalars over all elements of the tensor, r = `strength` (1: full
correction, 0: plain gossip), and the target σ²_i[l] is (`target`):

    follow_others  the mean variance of the models node i received, R_i = {j ≠ i: w_ij > 0},
                   weighted by `received_weights`:
                     'mixing'  Σ_{j∈R_i} w_ij Var(x_j[l]) / Σ_{j∈R_i} w_ij
                     'uniform' (1/|R_i|) Σ_{j∈R_i} Var(x_j[l])   (DFL_torch: the plain mean
                               over its receive buffer; equal to 'mixing' whenever the
                               received weights are equal, as in gossip learning on a graph)
    follow_self    Var(x_i[l]), node i's own tensor before averaging
    conservative   β Var(x_i[l]) + (1-β) follow_others,   β = `beta`

The paper's experiment (experiments/configs/vca_mnist.py) is DFL_torch's: follow_others,
received_weights='uniform', estimator='unbiased' (torch.var), eps_mode='additive' with
eps = 1e-4, norm_layers='correct', tensors='all', strength 1.

Rules made explicit:
* The mean of every tensor is unchanged; only its spread about the mean is rescaled.
* `tensors`: 'all' corrects every weight and bias; 'kernels' only leaves with >= 2 dimensions
  per node (dense and convolution kernels).
* `norm_layers`: 'skip' leaves every leaf of a normalisation layer alone, i.e. any leaf whose
  path names a `batch_stats` collection or a module with 'norm' in its name (BatchNorm_0,
  GroupNorm_0, LayerNorm_0, ...): their scale/bias start at variance 0, so there is no initial
  variance to restore. 'correct' (DFL_torch) corrects their scale and bias like any weight and
  skips only running statistics (`batch_stats`; torch's running_mean / running_var /
  num_batches_tracked), which are data, not weights.
* `estimator`: 'population' (÷n) or 'unbiased' (÷(n-1), torch.var) over the n elements of a
  tensor. With eps_mode='threshold' target and current variance share the factor n/(n-1), which
  cancels in σ²/v: the estimator only moves the threshold. With 'additive' it does not cancel.
* A one-element tensor has variance 0 under both estimators (as DFL_torch's
  calculate_variance_for_tensor) and is never changed: it has no spread to rescale.
* A node that received no model (no j ≠ i with w_ij > 0) takes its own variance as "others".

Deviations from DFL_torch that remain:
* Its nodes are asynchronous and average whenever their buffer holds deg(i) models, which may
  hold two models of one fast neighbour and none of a slow one; here every round each node
  receives exactly one model from each neighbour.
* Its averaging leaves running statistics un-averaged (each node keeps its own); `mix` averages
  every leaf it is given. (dfl's models have no running statistics.)
* Its FollowSelfVariance / FollowConservative compute the node's "own" variance from the model
  after its in-place averaging (ConservativeModelAverager overwrites self_model before
  get_variance), so follow_self there is a no-op up to eps; here it is the variance before
  averaging, as the paper describes. Its FollowOthers, the paper's method, is unaffected.

Everything is vectorised: per-node per-tensor variances form one [N, L] matrix, mixed with the
neighbour weights in one product; the Python loop over the pytree's leaves runs at trace time.

Config: the `variance_correction` section's fields are declared in HYPERPARAMETERS (as an
algorithm's are, dfl/algorithms/registry.py): `beta` and `strength` are batchable; a disabled
section uses only `enabled`, and `beta` is used only by target='conservative', so setting
another field on the command line is refused (`used_fields`, `unused_message`).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp

from dfl.hyperparameters import Hyperparameter, require
from dfl.mixing import DenseMixing, Mixing, SparseMixing, mix
from dfl.tracing import concrete, is_traced

PyTree = Any
TARGETS = ("follow_others", "follow_self", "conservative")
ESTIMATORS = ("population", "unbiased")
TENSORS = ("all", "kernels")
EPS_MODES = ("threshold", "additive")
NORM_LAYERS = ("skip", "correct")
RECEIVED_WEIGHTS = ("mixing", "uniform")
DEFAULT_EPS = 1e-12
_NORMALIZATION = re.compile(r"batch_stats|norm", re.IGNORECASE)
_RUNNING_STATISTICS = re.compile(r"batch_stats")


def _path_names(path) -> list[str]:
  names = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        names.append(str(getattr(entry, attr)))
        break
  return names


def is_normalization(path) -> bool:
  """True for a leaf of a normalisation layer or its running statistics, by its pytree path."""
  return any(_NORMALIZATION.search(name) for name in _path_names(path))


def is_running_statistic(path) -> bool:
  """True for a leaf of the `batch_stats` collection (never corrected)."""
  return any(_RUNNING_STATISTICS.search(name) for name in _path_names(path))


def is_corrected(path, x_N: jax.Array, tensors: str, norm_layers: str = "skip") -> bool:
  """Whether the leaf at `path` (with a leading node axis) is variance-corrected."""
  if is_running_statistic(path) or (norm_layers == "skip" and is_normalization(path)):
    return False
  return tensors == "all" or x_N.ndim - 1 >= 2


def tensor_variance(x_N: jax.Array, estimator: str = "population") -> jax.Array:
  """[N]: the variance of each node's tensor over all its elements (÷n or ÷(n-1))."""
  x_NxD = x_N.reshape(x_N.shape[0], -1)
  n = x_NxD.shape[1]
  centred = x_NxD - jnp.mean(x_NxD, axis=1, keepdims=True)
  ss_N = jnp.sum(centred * centred, axis=1)
  return ss_N / (n if estimator == "population" else max(n - 1, 1))


def received_mean(mixing: Mixing, v_NxL: jax.Array, received_weights: str = "mixing") -> jax.Array:
  """[N, L]: Σ_{j≠i, w_ij>0} a_ij v_j / Σ_{j≠i, w_ij>0} a_ij with a_ij = w_ij ('mixing') or 1
  ('uniform'); a node without neighbours keeps v_i."""
  uniform = received_weights == "uniform"
  if isinstance(mixing, DenseMixing):
    W = mixing.W
    edge_NxN = (W > 0) & ~jnp.eye(W.shape[0], dtype=bool)
    A_NxN = jnp.where(edge_NxN, 1 if uniform else W, 0).astype(v_NxL.dtype)
    total_N = A_NxN.sum(axis=1)
    weighted_NxL = A_NxN @ v_NxL
  else:
    idx_NxK, w_NxK = mixing.indices, mixing.weights
    n = idx_NxK.shape[0]
    edge_NxK = (w_NxK > 0) & (idx_NxK != jnp.arange(n)[:, None])
    A_NxK = jnp.where(edge_NxK, 1 if uniform else w_NxK, 0).astype(v_NxL.dtype)
    total_N = A_NxK.sum(axis=1)
    weighted_NxL = jnp.einsum("nk,nkl->nl", A_NxK, v_NxL[idx_NxK])
  has_neighbours_N = total_N > 0
  safe_total_N = jnp.where(has_neighbours_N, total_N, 1)
  return jnp.where(has_neighbours_N[:, None], weighted_NxL / safe_total_N[:, None], v_NxL)


def check_options(*, target: str, beta: float, estimator: str, tensors: str, strength: float,
                  eps: float, eps_mode: str = "threshold", norm_layers: str = "skip",
                  received_weights: str = "mixing") -> None:
  """Raises ValueError naming the bad option and the valid values."""
  for name, value, valid in (("eps_mode", eps_mode, EPS_MODES),
                             ("norm_layers", norm_layers, NORM_LAYERS),
                             ("received_weights", received_weights, RECEIVED_WEIGHTS)):
    if value not in valid:
      raise ValueError(f"Unknown {name}={value!r}; valid: {list(valid)}.")
  if target not in TARGETS:
    raise ValueError(f"Unknown target={target!r}; valid: {list(TARGETS)}.")
  if estimator not in ESTIMATORS:
    raise ValueError(f"Unknown estimator={estimator!r}; valid: {list(ESTIMATORS)}.")
  if tensors not in TENSORS:
    raise ValueError(f"Unknown tensors={tensors!r}; valid: {list(TENSORS)}.")
  if concrete(beta) and not 0.0 <= beta <= 1.0:
    raise ValueError(f"beta must be in [0, 1], got {beta}.")
  if concrete(strength) and not strength >= 0.0:
    raise ValueError(f"strength must be >= 0 (0: no correction, 1: full), got {strength}.")
  if not eps >= 0.0:
    raise ValueError(f"eps must be >= 0, got {eps}.")
  if eps_mode == "additive" and not eps > 0.0:
    raise ValueError(f"eps_mode='additive' needs eps > 0 (a zero-variance tensor would give "
                     f"0/0), got eps={eps}.")


def _as_mixing(W) -> Mixing:
  if isinstance(W, (DenseMixing, SparseMixing)):
    return W
  return DenseMixing(jnp.asarray(W))


def variance_corrected_mix(W: Union[jax.Array, Mixing], params: PyTree, *,
                           target: str = "follow_others", beta: float = 0.5,
                           estimator: str = "population", tensors: str = "all",
                           strength: float = 1.0, eps: float = DEFAULT_EPS,
                           eps_mode: str = "threshold", norm_layers: str = "skip",
                           received_weights: str = "mixing") -> PyTree:
  """One gossip step x̂ = W x followed by the per-node, per-tensor variance correction.

  Args:
    W: the mixing matrix [N, N] (array or `DenseMixing`), or a `SparseMixing` neighbour form.
    params: pytree whose leaves have a leading node axis N: the models before averaging.
    target: 'follow_others' | 'follow_self' | 'conservative' (see the module docstring).
    beta: weight of the node's own variance in the 'conservative' target.
    estimator: 'population' (÷n) or 'unbiased' (÷(n-1)).
    tensors: 'all' (weights and biases) or 'kernels' (leaves with >= 2 dims per node).
    strength: r in s = 1 + r (σ_target / σ - 1); 1 = full correction, 0 = plain gossip.
    eps: 'threshold': tensors whose averaged variance is <= eps are left unchanged;
      'additive': added to target and current variance inside the square root.
    eps_mode: 'threshold' (exact ratio above eps) or 'additive' (DFL_torch's
      sqrt((σ² + eps) / (v + eps)), with eps = 1e-4 there).
    norm_layers: 'skip' (no leaf of a normalisation layer) or 'correct' (their scale and bias
      too; running statistics are always skipped).
    received_weights: 'mixing' (W-weighted mean of the received variances) or 'uniform' (plain
      mean over the received models, DFL_torch).

  Returns:
    The mixed and corrected pytree, same structure and shapes as `params`.
  """
  check_options(target=target, beta=beta, estimator=estimator, tensors=tensors,
                strength=strength, eps=eps, eps_mode=eps_mode, norm_layers=norm_layers,
                received_weights=received_weights)
  mixing = _as_mixing(W)
  mixed = mix(mixing, params)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  mixed_leaves = treedef.flatten_up_to(mixed)
  chosen = [k for k, (path, x) in enumerate(leaves)
            if is_corrected(path, x, tensors, norm_layers)]
  if not chosen:
    return mixed

  own_NxL = jnp.stack([tensor_variance(leaves[k][1].astype(jnp.float32), estimator)
                       for k in chosen], axis=1)
  if target == "follow_self":
    target_NxL = own_NxL
  else:
    others_NxL = received_mean(mixing, own_NxL, received_weights)
    target_NxL = others_NxL if target == "follow_others" else beta * own_NxL + (1 - beta) * others_NxL

  out = list(mixed_leaves)
  for column, k in enumerate(chosen):
    x_N = mixed_leaves[k]
    x_NxD = x_N.reshape(x_N.shape[0], -1).astype(jnp.float32)
    v_N = tensor_variance(x_NxD, estimator)
    if eps_mode == "additive":
      ratio_N = jnp.sqrt((target_NxL[:, column] + eps) / (v_N + eps))
      scale_N = 1.0 + strength * (ratio_N - 1.0)
    else:
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
                   "tensors": "all", "strength": 1.0, "eps": DEFAULT_EPS,
                   "eps_mode": "threshold", "norm_layers": "skip", "received_weights": "mixing",
                   **options})
  return lambda mixing, params: variance_corrected_mix(mixing, params, **options)


def _number(value):
  """A float from the config, or a traced value as is (hyperparameters batched over runs)."""
  return value if is_traced(value) else float(value)


def build_mixer(section) -> Optional[Callable[[Mixing, PyTree], PyTree]]:
  """The mixer selected by the config's `variance_correction` section; None = plain gossip."""
  if section is None or not section.enabled:
    return None
  return variance_corrected_mixer(target=section.target, beta=_number(section.beta),
                                  estimator=section.estimator, tensors=section.tensors,
                                  strength=_number(section.strength), eps=float(section.eps),
                                  eps_mode=section.get("eps_mode", "threshold"),
                                  norm_layers=section.get("norm_layers", "skip"),
                                  received_weights=section.get("received_weights", "mixing"))


def layer_variances(params: PyTree, estimator: str = "population") -> dict[str, jax.Array]:
  """{'Dense_0/kernel': [N] per-node variance, ...} for every leaf: the vanishing-variance probe."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  return {"/".join(_path_names(path)): tensor_variance(x, estimator) for path, x in leaves}


# ------------------------------------------------------------------ the config section

def _one_of(field: str, valid):
  def check(vc) -> None:
    value = vc.get(field)
    require(value in valid, f"Unknown variance_correction.{field}={value!r}; valid: "
            f"{sorted(valid)}.")
  return check


def _check_eps(vc) -> None:
  require(vc.eps >= 0, f"variance_correction.eps must be >= 0, got {vc.eps}.")
  require(vc.get("eps_mode", "threshold") != "additive" or vc.eps > 0,
          f"variance_correction.eps must be > 0 with eps_mode='additive' (0/0 on a "
          f"zero-variance tensor), got {vc.eps}.")


# In the order they are checked (eps after eps_mode: its check reads the mode).
HYPERPARAMETERS = (
    Hyperparameter("enabled", False, doc="correct the variance after every gossip step"),
    Hyperparameter("target", "follow_others", check=_one_of("target", TARGETS),
                   doc="follow_others | follow_self | conservative"),
    Hyperparameter("estimator", "population", check=_one_of("estimator", ESTIMATORS),
                   doc="population (/n) | unbiased (/(n-1))"),
    Hyperparameter("tensors", "all", check=_one_of("tensors", TENSORS),
                   doc="all (weights + biases) | kernels (>= 2-dim leaves)"),
    Hyperparameter("eps_mode", "threshold", check=_one_of("eps_mode", EPS_MODES),
                   doc="threshold (exact ratio) | additive (DFL_torch)"),
    Hyperparameter("norm_layers", "skip", check=_one_of("norm_layers", NORM_LAYERS),
                   doc="skip (every *norm* leaf) | correct (all but running statistics)"),
    Hyperparameter("received_weights", "mixing",
                   check=_one_of("received_weights", RECEIVED_WEIGHTS),
                   doc="mixing (W-weighted) | uniform (plain mean)"),
    Hyperparameter("beta", 0.5, batchable=True, doc="conservative: weight of the own variance",
                   check=lambda vc: require(0 <= vc.beta <= 1, f"variance_correction.beta must "
                                            f"be in [0, 1], got {vc.beta}.")),
    Hyperparameter("strength", 1.0, batchable=True, doc="r: 0 = plain gossip, 1 = full",
                   check=lambda vc: require(vc.strength >= 0, f"variance_correction.strength "
                                            f"must be >= 0 (0: none, 1: full), got "
                                            f"{vc.strength}.")),
    Hyperparameter("eps", DEFAULT_EPS, check=_check_eps,
                   doc="threshold: variance <= eps stays; additive: in the sqrt"),
)


def check_section(section) -> None:
  """The section's own checks (when enabled); those that involve the algorithm live in
  dfl/config_checks.py."""
  if section is None or not section.enabled:
    return
  for h in HYPERPARAMETERS:
    if h.check is not None:
      h.check(section)


def used_fields(section) -> frozenset[str]:
  """The fields of the section a run reads: `enabled` alone when disabled; `beta` only with
  target='conservative'."""
  if section is None or not section.get("enabled", False):
    return frozenset({"enabled"})
  fields = {h.name for h in HYPERPARAMETERS}
  if section.get("target") != "conservative":
    fields.discard("beta")
  return frozenset(fields)


def unused_message(section, field: str, value) -> str:
  """Why the explicitly set `field` ("variance_correction.beta") of `section` is refused."""
  if not section.get("enabled", False):
    return (f"{field}={value!r} is not used with variance_correction.enabled=False; set "
            "--config.variance_correction.enabled=True, or leave it out.")
  return (f"{field}={value!r} is only used by variance_correction.target='conservative', not "
          f"{section.target!r}; leave it out.")
