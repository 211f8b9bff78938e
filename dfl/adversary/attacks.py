"""What Byzantine nodes send: crafted models that replace their messages before aggregation.

Every round, after local training, each Byzantine node b sends one crafted model (the same to
all its neighbours) instead of its own; honest nodes send their models. The attacker is
omniscient about its neighbourhood: it reads the models its honest neighbours H_b (the valid
slots of its row of W that are honest) hold this round, their coordinate-wise mean μ_b and
standard deviation σ_b (unbiased; 0 with fewer than two), and crafts

    sign_flip   -scale · μ_b
    gaussian    noise_std · ε,  ε ~ N(0, I)           (Blanchard et al. 2017's Gaussian worker)
    alie        μ_b - z σ_b                           ("A Little Is Enough", Baruch, Baruch,
                z = Φ⁻¹((n - s) / n), s = ⌊n/2 + 1⌋ - f    Goldberg, NeurIPS 2019; n = num_nodes,
                                                      f = Byzantine nodes; adversary.alie_z sets z)
    ipm         -ε μ_b                                (inner-product manipulation, Xie, Koyejo,
                                                      Gupta, UAI 2020 "Fall of Empires"; ε = 0.1)
    constant    scale · 1                             (every coordinate = scale)
    label_flip  nothing crafted: the attacker trains on labels y -> C - 1 - y (nodes.py) and
                sends its model as an honest node would
    sybil       one adversary behind all Byzantine identities: every identity sends the SAME
                model, crafted by `sybil_attack` from the pooled honest neighbours of all of
                them (one noise draw for gaussian)

A Byzantine node without honest neighbours crafts from its own model (μ = x_b, σ = 0).

Reference code followed: github.com/epfml/byzantine-robust-decentralized-optimizer,
codes/attacks.py (ALittleIsEnoughAttack, IPMAttack with epsilon = 0.1, BitFlippingWorker,
LabelFlippingWorker with 9 - label). Deviations:
* There each attacker has one target node and crafts from the target's model and the target's
  honest neighbours; here each attacker crafts one message from its own honest neighbours and
  sends it to all of them (a graph node there attacks exactly one honest node).
* ALIE's z uses Baruch et al.'s n and s (cdf (n - s) / n); the reference's variant divides by
  the honest count, cdf (n - f - s) / (n - f).
* sign_flip negates the honest neighbours' mean, not the attacker's own model (BitFlipping):
  the attacker's own model is not trained usefully here, so it carries no information.
* Sybil identities live inside the graph (they are num_nodes' Byzantine nodes); extra Sybil
  nodes attached to an honest graph are not built.
"""
from __future__ import annotations

import statistics
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dfl.aggregation.rules import neighbourhood
from dfl.mixing import Mixing

ATTACKS = ("none", "sign_flip", "gaussian", "alie", "ipm", "constant", "label_flip", "sybil")
# What a Sybil crowd may send together (label_flip trains, it crafts nothing).
SYBIL_ATTACKS = ("sign_flip", "gaussian", "alie", "ipm", "constant")


class AttackOptions(NamedTuple):
  attack: str
  scale: float = 1.0
  noise_std: float = 1.0
  z: float = 1.0  # ALIE's z (alie_z(n, f) by default)
  ipm_epsilon: float = 0.1
  sybil_attack: str = "alie"


def alie_z(num_nodes: int, num_byzantine: int) -> float:
  """Baruch et al. 2019: s = floor(n/2 + 1) - f supporters needed, z = Φ⁻¹((n - s) / n)."""
  n, f = int(num_nodes), int(num_byzantine)
  s = np.floor(n / 2 + 1) - f
  cdf = float(np.clip((n - s) / n, 1e-6, 1 - 1e-6))
  return statistics.NormalDist().inv_cdf(cdf)


def _craft(kind: str, opts: AttackOptions, key, mu_D, sigma_D):
  if kind == "sign_flip":
    return -opts.scale * mu_D
  if kind == "gaussian":
    return opts.noise_std * jax.random.normal(key, mu_D.shape, mu_D.dtype)
  if kind == "alie":
    return mu_D - opts.z * sigma_D
  if kind == "ipm":
    return -opts.ipm_epsilon * mu_D
  if kind == "constant":
    return jnp.full_like(mu_D, opts.scale)
  raise ValueError(f"Unknown attack {kind!r}; valid: {list(SYBIL_ATTACKS)}.")


def _slot_moments(idx_NxK, coef_NxK, x_NxD):
  """Per row: count, mean and unbiased std of the models x[idx[i, k]] with coef[i, k] = 1."""
  count_N = coef_NxK.sum(axis=1)
  safe_N1 = jnp.maximum(count_N, 1)[:, None]
  sum_NxD = sum(coef_NxK[:, k, None] * x_NxD[idx_NxK[:, k]] for k in range(idx_NxK.shape[1]))
  mu_NxD = sum_NxD / safe_N1
  ss_NxD = sum(coef_NxK[:, k, None] * (x_NxD[idx_NxK[:, k]] - mu_NxD) ** 2
               for k in range(idx_NxK.shape[1]))
  sigma_NxD = jnp.where(count_N[:, None] >= 2,
                        jnp.sqrt(ss_NxD / jnp.maximum(count_N - 1, 1)[:, None]), 0)
  return count_N, mu_NxD, sigma_NxD


def craft_messages(opts: AttackOptions, key: jax.Array, mixing: Mixing, x_NxD: jax.Array,
                   byzantine_N: jax.Array) -> jax.Array:
  """[N, D]: what every node sends this round: its own model if honest, the crafted one if
  Byzantine. x_NxD: the models after this round's local training (flattened)."""
  if opts.attack in ("none", "label_flip"):
    return x_NxD
  byz_N = byzantine_N.astype(bool)
  n = x_NxD.shape[0]
  idx_NxK, _, valid_NxK = neighbourhood(mixing)
  honest_NxK = valid_NxK & ~byz_N[idx_NxK]
  if opts.attack == "sybil":
    # The honest nodes next to any identity, pooled: one crafted model for the whole crowd.
    pooled_N = jnp.zeros(n, jnp.int32).at[idx_NxK].max(
        (honest_NxK & byz_N[:, None]).astype(jnp.int32)) > 0
    pooled_N = jnp.where(pooled_N.any(), pooled_N, ~byz_N)  # no honest contact: all honest
    w_N = pooled_N.astype(x_NxD.dtype)
    count = w_N.sum()
    mu_D = (w_N @ x_NxD) / jnp.maximum(count, 1)
    ss_D = w_N @ (x_NxD - mu_D) ** 2
    sigma_D = jnp.where(count >= 2, jnp.sqrt(ss_D / jnp.maximum(count - 1, 1)), 0)
    msg_D = _craft(opts.sybil_attack, opts, jax.random.fold_in(key, 0), mu_D, sigma_D)
    return jnp.where(byz_N[:, None], msg_D[None, :], x_NxD)
  count_N, mu_NxD, sigma_NxD = _slot_moments(idx_NxK, honest_NxK.astype(x_NxD.dtype), x_NxD)
  alone_N1 = (count_N == 0)[:, None]
  mu_NxD = jnp.where(alone_N1, x_NxD, mu_NxD)
  sigma_NxD = jnp.where(alone_N1, 0, sigma_NxD)
  keys_N = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(n))
  crafted_NxD = jax.vmap(lambda k, m, s: _craft(opts.attack, opts, k, m, s))(
      keys_N, mu_NxD, sigma_NxD)
  return jnp.where(byz_N[:, None], crafted_NxD, x_NxD)


def build_attack(section, num_nodes: int, num_byzantine: int) -> Optional[AttackOptions]:
  """AttackOptions from the config's `adversary` section (None when attack = none)."""
  if section is None or section.attack == "none":
    return None
  z = section.alie_z
  return AttackOptions(section.attack, float(section.scale), float(section.noise_std),
                       alie_z(num_nodes, num_byzantine) if z is None else float(z),
                       float(section.ipm_epsilon), section.sybil_attack)
