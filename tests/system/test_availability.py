"""Availability over time: offline nodes' updates are dropped, the clock skips them, and the
figures are those computed by hand or by a plain numpy round."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl.algorithms.base import RoundInputs, RoundMetrics
from dfl.algorithms.dfedavg import dfedavg
from dfl.algorithms.fedavg import fedavg
from dfl.config_checks import validate_config
from dfl.errors import UserError
from dfl.mixing import DenseMixing
from dfl.system.availability import markov_table, trace_table
from dfl.system.clock import SimClock
from dfl.system.deadline import deadline_mixer, with_deadline
from dfl.system.model import SystemModel
from dfl.train import train_and_evaluate
from tests.algorithms._tiny import N, ring_W, tiny_problem
from tests.conftest import tiny_config

K, B, MODEL_BYTES = 2, 4, 1000
# Device 0 always online; 1 offline in round 1; 2 offline in round 0; 3 offline in rounds 1, 2.
TRACE = "device,start_round,end_round\n0,0,3\n1,0,1\n# a comment\n1,2,3\n2,1,3\n3,0,1\n"
ONLINE_3xN = np.array([[1, 1, 0, 1], [1, 0, 1, 0], [1, 1, 1, 0]], bool)


def _write(tmp_path, text, name="online.csv"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def _flat(params_N):
  return np.concatenate([np.asarray(x).reshape(N, -1) for x in jax.tree.leaves(params_N)], 1)


def _inputs(data, mixing, t):
  key = jax.random.key(3)
  return RoundInputs(jnp.int32(t), jax.random.fold_in(key, t), mixing, data, key)


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_trace_table_and_markov_chain(tmp_path):
  path = _write(tmp_path, TRACE)
  np.testing.assert_array_equal(trace_table(path, N, 3), ONLINE_3xN)
  # Node i uses device i mod 4: nodes 4, 5 repeat devices 0, 1.
  np.testing.assert_array_equal(trace_table(path, 6, 3)[:, 4:], ONLINE_3xN[:, :2])
  # The chain, stepped by a loop over the same uniforms.
  u = np.random.default_rng([5, 7]).random((30, 3))
  expected, state = [], np.ones(3, bool)
  for t in range(30):
    if t:
      state = np.array([u[t, i] >= 0.2 if state[i] else u[t, i] < 0.4 for i in range(3)])
    expected.append(state)
  np.testing.assert_array_equal(markov_table(0.2, 0.4, 3, 30, 5), np.array(expected))
  assert markov_table(0.0, 0.5, 3, 30, 5).all()


def test_offline_nodes_are_dropped_from_the_gossip_round(tmp_path):
  loss_fn, params_N, data = tiny_problem()
  params_N = jax.tree.map(lambda x: x + 0.01 * jnp.arange(N, dtype=x.dtype).reshape(
      (N,) + (1,) * (x.ndim - 1)), params_N)
  system = SystemModel(np.full(N, 100.0), np.full(N, 1e4), np.full(N, 0.1),
                       online_RxN=trace_table(_write(tmp_path, TRACE), N, 3))
  W = ring_W()
  mixing = DenseMixing(jnp.asarray(W, jnp.float32))
  algorithm = with_deadline(dfedavg(loss_fn, lr=0.1, local_steps=K, batch_size=B,
                                    mixer=deadline_mixer()), "gossip", system, np.full(N, K * B),
                            MODEL_BYTES)
  plain = dfedavg(loss_fn, lr=0.1, local_steps=K, batch_size=B)
  state = algorithm.init(params_N)
  for t in range(3):
    x = state.params
    local, _ = plain.round(plain.init(x), _inputs(data, DenseMixing(jnp.eye(N)), t))
    offline = ~ONLINE_3xN[t]
    sent = np.where(offline[:, None], _flat(x), _flat(local.params))
    W_used = W.copy()  # offline column j != i moves onto the diagonal
    for i in range(N):
      for j in range(N):
        if i != j and offline[j]:
          W_used[i, i] += W_used[i, j]
          W_used[i, j] = 0.0
    state, metrics = algorithm.round(state, _inputs(data, mixing, t))
    np.testing.assert_allclose(_flat(state.params), W_used @ sent, rtol=1e-5, atol=1e-6)
    assert not np.asarray(metrics.late_N).any()  # offline is not late


def test_fedavg_averages_the_online_clients(tmp_path):
  loss_fn, params_N, data = tiny_problem()
  system = SystemModel(np.full(N, 100.0), np.full(N, 1e4), np.full(N, 0.1),
                       online_RxN=trace_table(_write(tmp_path, TRACE), N, 3))
  inner = fedavg(loss_fn, num_nodes=N, lr=0.1, local_steps=K, batch_size=B, client_fraction=1.0)
  plain = dfedavg(loss_fn, lr=0.1, local_steps=K, batch_size=B)
  local, _ = plain.round(plain.init(params_N), _inputs(data, DenseMixing(jnp.eye(N)), 0))
  expected = _flat(local.params)[ONLINE_3xN[0]].mean(axis=0)  # node 2 is offline in round 0
  algorithm = with_deadline(inner, "server", system, np.full(N, K * B), MODEL_BYTES)
  state, _ = algorithm.round(algorithm.init(params_N), _inputs(data, None, 0))
  np.testing.assert_allclose(_flat(state.params), np.broadcast_to(expected, (N, len(expected))),
                             rtol=1e-5, atol=1e-6)


def test_clock_does_not_wait_for_offline_nodes():
  # 20 samples at [100, 10, 100] samples/s: [0.2, 2.0, 0.2] s, no messages. Round 0 waits for
  # node 1 (2.0 s); in round 1 node 1 is offline: 0.2 s. offline_fraction = 1 / 6.
  online = np.array([[1, 1, 1], [1, 0, 1]], bool)
  system = SystemModel(np.array([100.0, 10.0, 100.0]), np.full(3, 1e4), np.full(3, 0.1),
                       online_RxN=online)
  clock = SimClock(system, "dfedavg", [20, 20, 20], 100)
  zeros = np.zeros((2, 3), np.int64)
  clock.add(RoundMetrics(loss=np.zeros(2), transfers=np.zeros(2), sent_N=zeros,
                         received_N=zeros))
  record = clock.as_dict()
  assert record["sim_seconds"] == pytest.approx(2.2, abs=1e-12)
  assert record["offline_fraction"] == 1 / 6


def test_markov_without_failures_is_the_run_without_availability(tmp_path):
  on = dict(system__enabled=True, system__samples_per_second="uniform:100,400")
  train_and_evaluate(tiny_config(**on), str(tmp_path / "none"))
  train_and_evaluate(tiny_config(**on, system__availability="markov:p_fail=0,p_recover=0.5"),
                     str(tmp_path / "markov"))
  none, markov = _rows(tmp_path / "none"), _rows(tmp_path / "markov")
  strip = lambda rows: [{k: v for k, v in r.items() if k not in ("wall_seconds",
                                                                  "offline_fraction")}
                        for r in rows]
  assert strip(markov) == strip(none)  # every figure and sim_seconds, bit for bit
  assert [r["offline_fraction"] for r in markov] == [0.0, 0.0, 0.0]


def test_offline_fraction_in_metrics_and_exact_resume(tmp_path):
  # 4 nodes, 4 rounds, evaluated every 2: node 0 offline in round 1, node 1 in rounds 1-3,
  # node 3 in round 3. Rounds 0-1: 2 of 8 offline; rounds 2-3: 3 of 8.
  path = _write(tmp_path, "device,start_round,end_round\n0,0,1\n0,2,4\n1,0,1\n2,0,4\n3,0,3\n")
  overrides = dict(system__enabled=True, system__availability=f"trace:{path}")
  train_and_evaluate(tiny_config(**overrides), str(tmp_path / "trace"))
  assert [r["offline_fraction"] for r in _rows(tmp_path / "trace")] == [0.0, 0.25, 0.375]
  markov = dict(system__enabled=True, system__availability="markov:p_fail=0.4,p_recover=0.5",
                system__deadline_seconds=0.2, eval__every_rounds=1, train__rounds=4)
  train_and_evaluate(tiny_config(**markov), str(tmp_path / "whole"))
  train_and_evaluate(tiny_config(**{**markov, "train__rounds": 2}), str(tmp_path / "split"))
  train_and_evaluate(tiny_config(**markov), str(tmp_path / "split"))  # resumes at round 2
  whole, split = _rows(tmp_path / "whole"), _rows(tmp_path / "split")
  strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rows]
  assert [r["round"] for r in split] == [0, 1, 2, 3, 4]
  assert strip(split) == strip(whole)
  assert any(r["offline_fraction"] > 0 for r in whole)


@pytest.mark.parametrize("overrides, message", [
    ({"system__enabled": True, "system__availability": "markov:p_fail=2,p_recover=0.5"},
     "system.availability='markov:p_fail=2,p_recover=0.5': p_fail=2 must be a probability"),
    ({"system__enabled": True, "system__availability": "markov:p_fail=0.1"},
     "markov takes p_fail=F,p_recover=R; valid forms: \"none\""),
    ({"system__enabled": True, "system__availability": "weibull:2"},
     "system.availability='weibull:2': unknown form 'weibull'"),
    ({"system__enabled": True, "system__availability": "sometimes"},
     "valid forms: \"none\", \"markov:p_fail=F,p_recover=R\", \"trace:PATH.csv\""),
    ({"system__availability": "markov:p_fail=0.1,p_recover=0.5"},
     "is only used with system.enabled=True"),
    ({"system__enabled": True, "system__availability": "markov:p_fail=0.1,p_recover=0.5",
      "algorithm__name": "modest"}, "not algorithm.name='modest'"),
])
def test_config_errors(overrides, message):
  with pytest.raises(UserError) as e:
    validate_config(tiny_config(**overrides))
  assert message in str(e.value)


def test_bad_trace_files(tmp_path):
  for text, message in [("device,start,end\n0,0,1\n", "expected the columns"),
                        ("device,start_round,end_round\n0,3,3\n", "0 <= start_round < end_round"),
                        ("device,start_round,end_round\n0,a,3\n", "must be an integer")]:
    with pytest.raises(UserError, match=message):
      trace_table(_write(tmp_path, text), N, 3)
  assert os.path.exists(os.path.join(os.path.dirname(__file__), "..", "..", "experiments",
                                     "traces", "availability.csv"))
  assert trace_table("experiments/traces/availability.csv", 16, 200).shape == (200, 16)
