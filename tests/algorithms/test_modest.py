"""MoDeST: decentralized sampling, aggregation under failures, exact reduction to FedAvg."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dfl.algorithms.base import RoundInputs
from dfl.algorithms.modest import candidate_list, first_qualifying, modest_rounds
from dfl.local import NodeData
from dfl.membership import build_membership, static_membership
from dfl.experiment import build_experiment, mixing_operator
from dfl.train import train_and_evaluate


def _run(exp, rounds, start=0, state=None):
  state = exp.algorithm.init(exp.init_params) if state is None else state
  rounds_R = jnp.arange(start, start + rounds, dtype=jnp.int32)
  return exp.run_chunk(state, exp.data, exp.train_key, rounds_R,
                       mixing_operator(exp.topology, 0, False), False)


def _reference_selection(run_key, k, listed, qualifies, count):
  """Plain-Python reading of the protocol: walk L_k, skip unlisted, keep the qualifying ones."""
  chosen = []
  for node in np.asarray(candidate_list(run_key, k, len(listed))):
    if listed[node] and qualifies[node] and len(chosen) < count:
      chosen.append(int(node))
  return chosen


@pytest.mark.parametrize("s, epochs", [(4, 0), (2, 0), (4, 1)])
def test_equals_fedavg(tiny, s, epochs):
  """a = 1, sf = 1, no churn: bit-for-bit FedAvg with client_fraction = s / N (the sample is
  drawn from the same stream), in particular with full participation (s = N = 4); also with
  one local epoch per participant (per-node step counts over unequal shards)."""
  fedavg = build_experiment(tiny(algorithm__name="fedavg", algorithm__client_fraction=s / 4,
                                 algorithm__local_epochs=epochs))
  modest = build_experiment(tiny(algorithm__name="modest", algorithm__sample_size=s,
                                 algorithm__local_epochs=epochs))
  f_state, f_metrics = _run(fedavg, 5)
  m_state, m_metrics = _run(modest, 5)
  for f, m, rows in zip(jax.tree.leaves(f_state.params), jax.tree.leaves(m_state.params),
                        jax.tree.leaves(m_state.node_params)):
    np.testing.assert_array_equal(f, m)
    if s == 4:
      np.testing.assert_array_equal(f, rows)  # every node received the round model
  np.testing.assert_array_equal(f_metrics.loss, m_metrics.loss)


def test_first_qualifying_matches_reference_and_skips_non_qualifying():
  n, count = 10, 4
  rng = np.random.default_rng(0)
  run_key = jax.random.key(5)
  for k in range(20):
    listed, qualifies = rng.random(n) < 0.8, rng.random(n) < 0.6
    sel = first_qualifying(candidate_list(run_key, k, n), jnp.asarray(listed),
                           jnp.asarray(qualifies), count)
    expected = _reference_selection(run_key, k, listed, qualifies, count)
    got = [int(i) for i, v in zip(sel.nodes, sel.valid) if v]
    assert got == expected
    assert np.asarray(sel.valid).tolist() == [True] * len(expected) + [False] * (count - len(expected))
    # Listed candidates examined to find the `count`-th one (all listed when too few qualify).
    order = np.asarray(candidate_list(run_key, k, n))
    listed_order = [int(i) for i in order if listed[i]]
    examined = listed_order.index(expected[-1]) + 1 if len(expected) == count else len(listed_order)
    assert int(sel.examined[-1]) == examined


def test_sampling_is_uniform_over_responsive_nodes_in_the_long_run():
  n, s, rounds = 12, 3, 4000
  responsive = np.ones(n, bool)
  responsive[[2, 7, 11]] = False
  run_key = jax.random.key(1)
  select = jax.jit(jax.vmap(lambda k: first_qualifying(
      candidate_list(run_key, k, n), jnp.ones(n, bool), jnp.asarray(responsive), s).nodes))
  counts = np.bincount(np.asarray(select(jnp.arange(rounds))).ravel(), minlength=n)
  assert counts[~responsive].sum() == 0
  expected = rounds * s / responsive.sum()  # 1333 per node, binomial sd ~ 30
  assert np.abs(counts[responsive] / expected - 1).max() < 0.1, counts


def test_sample_depends_only_on_seed_and_round(tiny):
  """Rounds replay identically however they are chunked (keys derived, never carried)."""
  config = tiny(algorithm__name="modest", algorithm__sample_size=2,
                algorithm__membership="3:fail:0.5")
  exp = build_experiment(config)
  whole, whole_metrics = _run(exp, 6)
  exp = build_experiment(config)
  half, first = _run(exp, 3)
  half, second = _run(exp, 3, start=3, state=half)
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(half)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(whole_metrics.sent_N,
                                np.concatenate([first.sent_N, second.sent_N]))


@pytest.mark.parametrize("s, a, inactivity", [(3, 1, 50), (4, 2, 50), (4, 2, 2)])
def test_per_node_transfers_match_the_protocol_under_churn(tiny, s, a, inactivity):
  """The jitted round's per-node model transfers equal a plain-Python walk of the protocol
  (who is sampled, who fails, who aggregates), for every round of a run with churn; with
  inactivity_rounds = 2 the nodes failing at round 6 are no candidates from round 8 on."""
  n, rounds, schedule = 10, 12, "2:join:2,5:leave:1,6:fail:0.5"
  config = tiny(num_nodes=n, algorithm__name="modest", algorithm__sample_size=s,
                algorithm__aggregators=a, algorithm__membership=schedule,
                algorithm__inactivity_rounds=inactivity)
  exp = build_experiment(config)
  _, metrics = _run(exp, rounds)
  from dfl.experiment import _MEMBERSHIP_STREAM, _seed
  membership = build_membership(n, schedule, seed=_seed(None, config.seed, _MEMBERSHIP_STREAM))
  failed_at = membership.failed_at.astype(np.int64)
  listed = lambda t: np.asarray(membership.listed(t)) & ~(t >= failed_at + inactivity)
  answers = lambda t: np.asarray(membership.answers(t))
  for k in range(rounds):
    sample = _reference_selection(exp.train_key, k, listed(k), answers(max(k - 1, 0)), s)
    following = _reference_selection(exp.train_key, k + 1, listed(k + 1), answers(k), s)
    delivered = [j for j in sample if answers(k)[j]]
    aggregators = following[:a]
    sent, received = np.zeros(n, int), np.zeros(n, int)
    for j in delivered:
      for i in aggregators:
        if i != j:
          sent[j] += 1; received[i] += 1
    for i in aggregators:
      for m in following:
        if m != i:
          sent[i] += 1; received[m] += 1
    np.testing.assert_array_equal(metrics.sent_N[k], sent, err_msg=f"round {k}")
    np.testing.assert_array_equal(metrics.received_N[k], received, err_msg=f"round {k}")
    assert int(metrics.transfers[k]) == sent.sum()
    assert not (sent + received)[~membership.active_at(k)].any()  # never failed/left/unjoined
  assert (metrics.sent_N[:, 8:].sum(0) > 0).any()  # the joiners take part after joining


def _marker_algorithm(n, s, sf, membership, **options):
  """A local update that adds 2**i to every weight of node i: the aggregate reveals who counted."""
  def local_sgd(params, opt_state, key, data, lr_scale, num_steps=None):
    return jax.tree.map(lambda p: p + data.sizes.astype(p.dtype), params), opt_state, 0.0
  algorithm = modest_rounds(local_sgd, optax.sgd(0.1), num_nodes=n, sample_size=s,
                            success_fraction=sf, membership=membership, **options)
  data = NodeData(jnp.zeros((1, 1)), jnp.zeros(1, jnp.int32), jnp.zeros((n, 1), jnp.int32),
                  2 ** jnp.arange(n, dtype=jnp.int32))
  return algorithm, data


def _round(algorithm, data, state, k, run_key):
  inputs = RoundInputs(jnp.int32(k), jax.random.fold_in(run_key, k), None, data, run_key)
  return jax.jit(algorithm.round)(state, inputs)


@pytest.mark.parametrize("s, sf, expected", [(4, 0.6, 2), (5, 0.5, 2), (6, 0.75, 4), (4, 1.0, 4),
                                             (3, 0.2, 1)])
def test_aggregate_uses_the_first_floor_sf_s_arrivals(s, sf, expected):
  """The reference proceeds once floor(s * sf) models arrived (ceil would take one more in the
  first three cases); with s * sf < 1 the first arrival. No failures here."""
  n = 8
  run_key = jax.random.key(2)
  algorithm, data = _marker_algorithm(n, s, sf, static_membership(n))
  state = algorithm.init({"w": jnp.zeros((n, 1))})
  sample = set(_reference_selection(run_key, 0, np.ones(n, bool), np.ones(n, bool), s))
  state, _ = _round(algorithm, data, state, 0, run_key)
  total = int(round(float(state.round_model["w"][0, 0]) * expected))
  used = {i for i in range(n) if total >> i & 1}
  assert len(used) == expected and used <= sample, (used, sample)
  assert total == sum(2 ** i for i in used)  # exactly the mean of `expected` markers


@pytest.mark.parametrize("min_models", [3, 2])
def test_timeout_aggregates_at_least_min_models_else_the_round_is_void(min_models):
  """N = s = 6, sf = 1 (quorum 6), 4 nodes fail at round 2. Markers 2**i, all models start at 0:
  round 0 and 1 aggregate all six (x = 63/6 = 10.5, then 21); from round 2 two models arrive:
  fewer than 3 void the round (x stays 21), while min_models = 2 averages the two survivors a, b
  (x = 21 + (2**a + 2**b) / 2, twice)."""
  n = s = 6
  membership = build_membership(n, "2:fail:4", seed=0)
  survivors = np.flatnonzero(membership.failed_at == np.iinfo(np.int32).max)
  assert len(survivors) == 2
  algorithm, data = _marker_algorithm(n, s, 1.0, membership, min_models=min_models)
  run_key = jax.random.key(0)
  state = algorithm.init({"w": jnp.zeros((n, 1))})
  x = []
  for k in range(4):
    state, _ = _round(algorithm, data, state, k, run_key)
    x.append(float(state.round_model["w"][0, 0]))
  half = sum(2.0 ** survivors) / 2
  assert x == ([10.5, 21.0, 21.0, 21.0] if min_models == 3 else
               [10.5, 21.0, 21.0 + half, 21.0 + 2 * half])


@pytest.mark.parametrize("inactivity, expected", [(3, [144, 80, 80, 64, 64, 64]),
                                                  (0, [144, 80, 80, 80, 80, 80])])
def test_control_messages_with_and_without_inactivity_removal(inactivity, expected):
  """N = s = a = 6, 2 nodes fail at round 1. Control messages = probes + replies: each delivering
  participant probes the listed candidates up to the a-th that answers (all listed ones here) and
  each aggregator up to the s-th. Round 0: 6 * (6 + 6) + 6 * (6 + 6) = 144. From round 1, 4
  deliver and 4 answer among 6 listed: 4 * (6 + 4) * 2 = 80. With R = 3 the failed nodes leave the
  lists from round 1 + 3 = 4, i.e. the candidates of round 4 that round 3 probes: 4 * (4 + 4) * 2
  = 64; with R = 0 they are probed forever."""
  n = 6
  membership = build_membership(n, "1:fail:2", seed=0)
  algorithm, data = _marker_algorithm(n, n, 1.0, membership, aggregators=n,
                                      inactivity_rounds=inactivity)
  algorithm = algorithm._replace(round=jax.jit(algorithm.round))
  run_key = jax.random.key(3)
  state = algorithm.init({"w": jnp.zeros((n, 1))})
  control = []
  for k in range(6):
    inputs = RoundInputs(jnp.int32(k), jax.random.fold_in(run_key, k), None, data, run_key)
    state, metrics = algorithm.round(state, inputs)
    control.append(int(metrics.control_messages))
  assert control == expected


def test_round_without_arrivals_keeps_the_round_model():
  """s = 1: when the single participant of round 1 fails, nothing arrives; x^2 = x^1."""
  n, s = 8, 1
  membership = build_membership(n, "1:fail:0.75", seed=0)
  algorithm, data = _marker_algorithm(n, s, 1.0, membership)
  for seed in range(20):  # find a run whose participant of round 1 is among the failed
    run_key = jax.random.key(seed)
    participant = _reference_selection(run_key, 1, np.ones(n, bool), np.ones(n, bool), s)[0]
    if membership.active_at(1)[participant]:
      continue
    state, _ = _round(algorithm, data, algorithm.init({"w": jnp.zeros((n, 1))}), 0, run_key)
    before = state.round_model["w"]
    assert float(before[0, 0]) > 0
    state, metrics = _round(algorithm, data, state, 1, run_key)
    np.testing.assert_array_equal(state.round_model["w"], before)
    assert int(metrics.sent_N[participant]) == 0  # it never delivered
    assert int(metrics.transfers) == 0  # s = 1: the aggregator is the next participant itself
    return
  pytest.fail("no seed found whose round-1 participant fails")


@pytest.mark.slow
def test_training_continues_after_80_percent_fail(tiny, tmp_path):
  config = tiny(num_nodes=20, algorithm__name="modest", algorithm__sample_size=5,
                algorithm__membership="20:fail:0.8", algorithm__lr=0.2)
  config.train.rounds, config.eval.every_rounds = 80, 20
  train_and_evaluate(config, str(tmp_path))
  import json
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  accuracy = {r["round"]: r["test_accuracy"] for r in records}
  assert accuracy[80] > accuracy[40] > accuracy[20], accuracy


def test_batched_seeds_equal_separate_runs(tiny, tmp_path):
  """The evaluation view (round model on every row) survives a leading seed axis."""
  from tests.conftest import run_seeds
  config = tiny(algorithm__name="modest", algorithm__sample_size=2)
  batched = run_seeds(config, [0, 1], [tmp_path / "b0", tmp_path / "b1"])
  for seed, summary in zip((0, 1), batched):
    config.seed = seed
    alone = train_and_evaluate(config, str(tmp_path / f"s{seed}"))
    # Equal correct counts; the evaluator's count / n may round 1 ulp apart under the seed
    # vmap (seen: 80/359), so compare to float32 resolution.
    np.testing.assert_allclose(summary["final_test_accuracy"], alone["final_test_accuracy"],
                               rtol=2**-23)
    assert summary["comm_bytes"] == alone["comm_bytes"]


def test_modest_fields_are_checked_and_refused_elsewhere(tiny):
  from dfl.config_checks import validate_config
  for override, message in [
      ({"algorithm__name": "modest", "algorithm__min_models": 0},
       "algorithm.min_models must be an integer >= 1, got 0"),
      ({"algorithm__name": "modest", "algorithm__inactivity_rounds": -1},
       "algorithm.inactivity_rounds must be an integer >= 0"),
      ({"algorithm__name": "fedavg", "algorithm__min_models": 2},
       "algorithm.min_models=2 is only used by algorithm.name='modest', not 'fedavg'"),
      ({"algorithm__name": "dfedavg", "algorithm__inactivity_rounds": 10},
       "algorithm.inactivity_rounds=10 is only used by algorithm.name='modest', not 'dfedavg'")]:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
      validate_config(tiny(**override))
