"""Byzantine nodes: who they are, what they send, and that reported figures leave them out."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import topologies
from dfl.adversary import attacks, nodes, runtime
from dfl.aggregation import rules
from dfl.errors import UserError
from dfl.experiment import build_experiment
from dfl.mixing import DenseMixing, SparseMixing
from dfl.train import train_and_evaluate
from tests.conftest import tiny_config


def ring(n):
  topo = topologies.make("ring", n)
  idx, w = topo.neighbors(0)
  return (topo.matrix(0), DenseMixing(jnp.asarray(topo.matrix(0), jnp.float32)),
          SparseMixing(jnp.asarray(idx), jnp.asarray(w, jnp.float32)))


def test_alie_z_hand_numbers():
  # n = 20, f = 4: s = floor(11) - 4 = 7, z = Φ⁻¹(13 / 20) = 0.38532
  assert attacks.alie_z(20, 4) == pytest.approx(0.385320, abs=1e-5)
  # n = 20, f = 2: s = 9, z = Φ⁻¹(11 / 20) = 0.12566
  assert attacks.alie_z(20, 2) == pytest.approx(0.125661, abs=1e-5)


@pytest.mark.parametrize("attack", ["sign_flip", "alie", "ipm", "constant"])
def test_crafted_messages_from_honest_neighbours(attack):
  """Ring of 6, node 2 Byzantine: its honest neighbours are 1 and 3, μ = (x1 + x3) / 2,
  σ = |x1 - x3| / √2 (unbiased, two values); nodes 4 and 5 (both Byzantine with node 5's
  honest neighbour 0 only) craft from x3 resp. x0 with σ = 0."""
  X = np.arange(12, dtype=np.float32).reshape(6, 2) ** 1.5
  byz = jnp.asarray([False, False, True, False, True, True])
  opts = attacks.AttackOptions(attack, scale=2.0, z=0.7, ipm_epsilon=0.3)
  mu = {2: (X[1] + X[3]) / 2, 4: X[3], 5: X[0]}
  sigma = {2: np.abs(X[1] - X[3]) / np.sqrt(2), 4: 0 * X[0], 5: 0 * X[0]}
  craft = {"sign_flip": lambda b: -2.0 * mu[b], "alie": lambda b: mu[b] - 0.7 * sigma[b],
           "ipm": lambda b: -0.3 * mu[b], "constant": lambda b: np.full(2, 2.0)}[attack]
  expect = X.copy()
  for b in (2, 4, 5):
    expect[b] = craft(b)
  _, dense, sparse = ring(6)
  for form in (dense, sparse):
    got = attacks.craft_messages(opts, jax.random.key(0), form, jnp.asarray(X), byz)
    np.testing.assert_allclose(np.asarray(got), expect, rtol=1e-6, atol=1e-6)


def test_gaussian_and_sybil_messages():
  X = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)), jnp.float32)
  byz = jnp.asarray([False, True, False, True, False, False])
  _, dense, _ = ring(6)
  g = np.asarray(attacks.craft_messages(attacks.AttackOptions("gaussian", noise_std=3.0),
                                        jax.random.key(1), dense, X, byz))
  np.testing.assert_array_equal(g[[0, 2, 4, 5]], np.asarray(X)[[0, 2, 4, 5]])
  assert not np.allclose(g[1], g[3])  # independent draws per attacker
  # Sybil: one model from the pooled honest neighbours 0, 2, 4 of identities 1 and 3.
  s = np.asarray(attacks.craft_messages(attacks.AttackOptions("sybil", sybil_attack="sign_flip"),
                                        jax.random.key(1), dense, X, byz))
  np.testing.assert_allclose(s[1], -np.asarray(X)[[0, 2, 4]].mean(axis=0), rtol=1e-6)
  np.testing.assert_array_equal(s[1], s[3])


def test_gossip_step_replaces_byzantine_messages_before_aggregation():
  """Honest node i ends at Σ_j w_ij m_j with m_j the crafted model for Byzantine j (mean)."""
  W, dense, sparse = ring(6)
  X = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
  byz = np.array([False, False, True, False, False, False])
  sent = X.copy()
  sent[2] = -(X[1] + X[3]) / 2
  step = runtime.make_gossip_step(rules.build_rule(None),
                                  attacks.AttackOptions("sign_flip", scale=1.0))
  for form in (dense, sparse):
    with runtime.round_context(jax.random.key(0), 0, jnp.asarray(byz)):
      out = np.asarray(step(form, jnp.asarray(X)))
    for i in np.flatnonzero(~byz):
      np.testing.assert_allclose(out[i], sum(W[i, j] * sent[j] for j in range(6)), rtol=1e-5,
                                 atol=1e-6)


def test_byzantine_nodes_fixed_by_seed_and_placement():
  c = tiny_config(num_nodes=8, adversary__attack="sign_flip", adversary__fraction=0.25)
  a = build_experiment(c).byzantine_N
  assert a.sum() == 2
  np.testing.assert_array_equal(build_experiment(c).byzantine_N, a)
  # The adversary's own stream: the same nodes whatever the partition seed.
  c2 = tiny_config(num_nodes=8, adversary__attack="sign_flip", adversary__fraction=0.25,
                   data__seed=123)
  np.testing.assert_array_equal(build_experiment(c2).byzantine_N, a)
  draws = {tuple(nodes.choose_byzantine(c.adversary, 8, np.full(8, 2), seed=s)) for s in range(6)}
  assert len(draws) > 1
  c.adversary.placement = "highest_degree"
  c.adversary.fraction = 0.0
  c.adversary.count = 1
  star = nodes.choose_byzantine(c.adversary, 8, np.array([7, 1, 1, 1, 1, 1, 1, 1]), seed=0)
  np.testing.assert_array_equal(np.flatnonzero(star), [0])
  c.adversary.placement, c.adversary.count, c.adversary.ids = "ids", None, (3, 5)
  np.testing.assert_array_equal(np.flatnonzero(nodes.choose_byzantine(c.adversary, 8, None, 0)),
                                [3, 5])


def test_poison_labels_flips_only_the_attackers_copy():
  x = np.arange(6, dtype=np.float32)[:, None]
  y = np.array([0, 1, 2, 3, 4, 5])
  shards = [np.array([0, 1]), np.array([1, 2, 3]), np.array([4, 5])]
  x2, y2, s2 = nodes.poison_labels(x, y, shards, np.array([False, True, False]), 10)
  np.testing.assert_array_equal(y2[:6], y)
  np.testing.assert_array_equal(s2[0], [0, 1])
  np.testing.assert_array_equal(y2[s2[1]], [8, 7, 6])
  np.testing.assert_array_equal(x2[s2[1], 0], [1, 2, 3])


def test_honest_metrics_ignore_attackers():
  # shared: every node on the same test samples, so an honest node's figure does not depend on
  # its index among 6 or 4 nodes (per_node gives each index its own slice).
  c = tiny_config(num_nodes=6, adversary__attack="sign_flip", adversary__count=2,
                  eval__local_subset="shared")
  exp = build_experiment(c)
  honest = np.asarray(exp.honest_N)
  params = jax.tree.map(lambda x: np.array(x), exp.init_params)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: x + rng.normal(scale=0.3, size=x.shape).astype(x.dtype), params)
  garbage = jax.tree.map(lambda x: np.where(honest.reshape((-1,) + (1,) * (x.ndim - 1)), x, 1e3),
                         params)
  got = exp.evaluate(garbage, exp.honest_N)
  only_honest = exp.evaluate(jax.tree.map(lambda x: x[honest], params))
  for mine, plain in (("test_accuracy_honest", "test_accuracy"),
                      ("test_accuracy_honest_local_mean", "test_accuracy_local_mean"),
                      ("consensus_distance_honest", "consensus_distance")):
    np.testing.assert_allclose(float(got[mine]), float(only_honest[plain]), rtol=1e-5)
  assert "test_accuracy_honest" not in exp.evaluate(params)


def test_run_with_attack_writes_honest_figures(tmp_path):
  c = tiny_config(num_nodes=6, adversary__attack="alie", adversary__count=1,
                  aggregation__rule="median", topology__name="complete")
  summary = train_and_evaluate(c, str(tmp_path))
  assert 0 <= summary["final_test_accuracy_honest"] <= 1
  records = [json.loads(l) for l in open(os.path.join(tmp_path, "metrics.jsonl"))]
  assert {"test_accuracy_honest", "test_accuracy_honest_local_mean",
          "consensus_distance_honest"} <= set(records[-1])


def test_no_attacker_mean_is_todays_gossip(tmp_path):
  """An adversary section with zero attackers and rule=mean runs today's numbers exactly."""
  plain = train_and_evaluate(tiny_config(), str(tmp_path / "plain"))
  zero = train_and_evaluate(tiny_config(adversary__attack="sign_flip", adversary__count=0),
                            str(tmp_path / "zero"))
  for k in ("final_test_accuracy", "final_test_accuracy_local_mean", "final_consensus_distance",
            "final_train_loss"):
    assert zero[k] == plain[k], k
  assert zero["final_test_accuracy_honest"] == plain["final_test_accuracy"]


@pytest.mark.parametrize("overrides,match", [
    (dict(aggregation__rule="mode"), "Unknown aggregation.rule='mode'"),
    (dict(adversary__attack="bitflip"), "Unknown adversary.attack='bitflip'"),
    (dict(adversary__attack="alie", adversary__fraction=1.0), r"adversary.fraction must be in \[0, 1\)"),
    (dict(adversary__attack="alie", adversary__fraction=0.9), "all 4 nodes Byzantine"),
    (dict(adversary__fraction=0.25), "adversary.attack='none' but adversary.fraction=0.25"),
    (dict(adversary__attack="alie", adversary__placement="ids", adversary__ids=(7,)),
     r"adversary.ids=\(7,\)"),
    (dict(aggregation__rule="median", algorithm__name="fedavg"),
     "aggregation.rule='median' acts in the plain gossip step"),
    (dict(aggregation__rule="median", algorithm__name="choco"),  # CHOCO mixes its own copies
     "aggregation.rule='median' acts in the plain gossip step"),
    (dict(aggregation__rule="krum", variance_correction__enabled=True), "do not compose"),
    (dict(adversary__attack="ipm", adversary__count=1, variance_correction__enabled=True),
     "do not compose"),
    (dict(aggregation__rule="trimmed_mean", aggregation__trim=2.0), "aggregation.trim=2.0"),
])
def test_config_errors_name_the_field(overrides, match):
  with pytest.raises(UserError, match=match):
    build_experiment(tiny_config(**overrides))


@pytest.mark.parametrize("overrides", [
    dict(algorithm__name="gossip", aggregation__rule="clipped_gossip", adversary__attack="sybil",
         adversary__count=1, topology__mixing_form="sparse"),
    dict(algorithm__name="dpsgd", aggregation__rule="balance", adversary__attack="label_flip",
         adversary__count=1, adversary__placement="random"),
])
def test_other_gossip_algorithms_and_forms_run(tmp_path, overrides):
  summary = train_and_evaluate(tiny_config(**overrides), str(tmp_path))
  assert np.isfinite(summary["final_train_loss"])
  assert 0 <= summary["final_test_accuracy_honest"] <= 1


def test_resume_with_adversary_state_equals_uninterrupted_run(tmp_path):
  """The Byzantine mask travels in the checkpointed state: 2 + 2 rounds equal 4 rounds."""
  over = dict(num_nodes=6, adversary__attack="gaussian", adversary__count=2,
              aggregation__rule="trimmed_mean", topology__name="complete")
  whole = train_and_evaluate(tiny_config(**over), str(tmp_path / "whole"))
  train_and_evaluate(tiny_config(train__rounds=2, **over), str(tmp_path / "split"))
  resumed = train_and_evaluate(tiny_config(**over), str(tmp_path / "split"))
  for k in ("final_test_accuracy_honest", "final_consensus_distance_honest", "final_train_loss"):
    assert resumed[k] == whole[k], k


def test_sybil_identities_join_the_honest_graph_as_extra_nodes(tmp_path):
  config = tiny_config(num_nodes=8, adversary__attack="sybil", adversary__sybil_nodes=2,
                       adversary__sybil_degree=2)
  exp = build_experiment(config)
  assert exp.byzantine_N.tolist() == [False] * 6 + [True] * 2  # the attached identities
  support = exp.topology.matrix(0) != 0
  ring6 = np.zeros((6, 6), bool)
  for i in range(6):
    ring6[i, (i + 1) % 6] = ring6[(i + 1) % 6, i] = True
  assert np.array_equal(support[:6, :6] & ~np.eye(6, dtype=bool), ring6)  # honest ring intact
  for sybil in (6, 7):
    assert support[sybil, :6].sum() == 2 and np.array_equal(support[sybil, :6], support[:6, sybil])
  assert not support[6, 7]
  summary = train_and_evaluate(config, str(tmp_path))
  assert "final_test_accuracy_honest" in summary


@pytest.mark.parametrize("overrides,match", [
    (dict(adversary__attack="alie", adversary__sybil_nodes=2), "only adversary.attack='sybil'"),
    (dict(adversary__attack="sybil", adversary__sybil_nodes=2, adversary__count=1),
     "leave adversary.fraction, count"),
    (dict(adversary__attack="sybil", adversary__sybil_nodes=3), r"\[0, num_nodes - 2 = 2\]"),
    (dict(adversary__sybil_nodes=1), "adversary.attack='none'"),
])
def test_sybil_nodes_are_checked(overrides, match):
  with pytest.raises(UserError, match=match):
    build_experiment(tiny_config(**overrides))
