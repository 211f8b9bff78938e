"""The virtual clock on cases computed by hand, and end to end through the driver."""
import json
import os

import numpy as np
import pytest

from dfl.algorithms.base import RoundMetrics
from dfl.system.clock import SimClock
from dfl.system.model import SystemModel, samples_read
from dfl.train import train_and_evaluate
from tests.conftest import tiny_config


def _system(speed, bandwidth, latency, **kw):
  return SystemModel(np.asarray(speed, float), np.asarray(bandwidth, float),
                     np.asarray(latency, float), **kw)


def _metrics(sent, received, **kw):
  sent = np.asarray(sent)[None]
  return RoundMetrics(loss=np.zeros(1), transfers=sent.sum(1), sent_N=sent,
                      received_N=np.asarray(received)[None],
                      **{k: np.asarray(v)[None] for k, v in kw.items()})


def test_heterogeneous_three_node_path():
  # Path 0 - 1 - 2, 20 samples each, model of 100 bytes.
  # compute = 20/[100, 50, 200] = [0.2, 0.4, 0.1]
  # send    = [0.01 + 1*100/1000, 0.02 + 2*100/500, 0.03 + 1*100/2000] = [0.11, 0.42, 0.08]
  # T = [0.31, 0.82, 0.18] -> the round lasts 0.82 s.
  system = _system([100, 50, 200], [1000, 500, 2000], [0.01, 0.02, 0.03])
  clock = SimClock(system, "dpsgd", [20, 20, 20], 100)
  clock.add(_metrics([1, 2, 1], [1, 2, 1]))
  assert clock.as_dict()["sim_seconds"] == pytest.approx(0.82, abs=1e-12)
  clock.add(_metrics([1, 2, 1], [1, 2, 1]))
  assert clock.as_dict()["sim_seconds"] == pytest.approx(1.64, abs=1e-12)
  # A deadline of 0.5 s cuts the round there; node 1 (0.82 s) is late.
  late = SimClock(_system([100, 50, 200], [1000, 500, 2000], [0.01, 0.02, 0.03],
                          deadline=0.5), "dpsgd", [20, 20, 20], 100)
  late.add(_metrics([1, 2, 1], [1, 2, 1], late_N=[False, True, False]))
  assert late.as_dict() == {"sim_seconds": 0.5, "dropped_update_fraction": pytest.approx(1 / 3)}


def test_compressed_messages_and_isolated_nodes():
  # message_bytes replaces the model's bytes; a node that sends nothing pays no latency.
  system = _system([10, 10], [100, 100], [1.0, 1.0])
  clock = SimClock(system, "choco", [5, 5], 1000)
  metrics = _metrics([1, 0], [0, 1])._replace(message_bytes=50)
  clock.add(metrics)
  assert clock.seconds == pytest.approx(0.5 + 1.0 + 0.5)


def test_fedavg_sampled_clients_then_server_broadcast():
  # 4 clients, 1 and 3 sampled; 10 samples; model 200 bytes; server: l_S = 0.1, b_S = 2000.
  # client 1: 10/20 + 0.05 + 200/400 = 1.05;  client 3: 10/40 + 0.2 + 200/100 = 2.45
  # broadcast to the 2 clients: 0.1 + 2 * 200 / 2000 = 0.3  ->  2.75
  system = _system([10, 20, 30, 40], [100, 400, 100, 100], [0.0, 0.05, 0.0, 0.2],
                   server_bandwidth=2000.0, server_latency=0.1)
  clock = SimClock(system, "fedavg", [10] * 4, 200)
  sampled = [0, 1, 0, 1]
  clock.add(_metrics(sampled, sampled, trained_N=np.asarray(sampled, bool)))
  assert clock.seconds == pytest.approx(2.75, abs=1e-12)


def _modest_system():
  # Participants 0-3 compute 10 samples at [10, 20, 40, 5]/s: [1, 0.5, 0.25, 2] s; uplinks of
  # 100 B/s, 10-byte models; latencies 0 except node 4 (0.05 s).
  return _system([10, 20, 40, 5, 1], [100] * 5, [0, 0, 0, 0, 0.05])


def test_modest_aggregator_waits_for_floor_of_s_times_sf():
  # s = 4, sf = 0.5: q = floor(2.0) = 2. Aggregator 4 (not a participant); arrivals
  # [1.1, 0.6, 0.35, 2.1] -> the 2nd is 0.6; it sends x^{k+1} to 4 nodes: 0.05 + 4*10/100.
  def round_with_quorum(quorum):
    clock = SimClock(_modest_system(), "modest", [10] * 5, 10, quorum=quorum)
    clock.add(_metrics([1, 1, 1, 1, 4], [0, 0, 0, 0, 4],
                       trained_N=[True, True, True, True, False],
                       aggregator_N=[False, False, False, False, True]))
    return clock.seconds
  assert round_with_quorum(2) == pytest.approx(0.6 + 0.45, abs=1e-12)
  # sf = 1 (q = 4): the last arrival, 2.1.
  assert round_with_quorum(4) == pytest.approx(2.1 + 0.45, abs=1e-12)


def test_modest_aggregator_among_the_participants():
  # Aggregator 2 trains too: its own model is there at 0.25 s, the others' at
  # [1.1, 0.6, -, 2.1]; q = 2 -> 0.6. It sends to 3 others: 0 + 3 * 10 / 100 = 0.3.
  clock = SimClock(_modest_system(), "modest", [10] * 5, 10, quorum=2)
  clock.add(_metrics([1, 1, 3, 1, 0], [0, 1, 3, 1, 1],
                     trained_N=[True, True, True, True, False],
                     aggregator_N=[False, False, True, False, False]))
  assert clock.seconds == pytest.approx(0.6 + 0.3, abs=1e-12)


def test_samples_read_follow_the_batch_stream():
  # n = 20, B = 8: epochs of 3 batches (8, 8, 4). 2 steps: 16; 3 steps: 20; 4 steps: 28.
  assert samples_read([2, 3, 4, 7], [20] * 4, 8).tolist() == [16, 20, 28, 20 + 20 + 8]
  assert samples_read(5, [3], 8).tolist() == [15]  # a shard smaller than a batch
  assert samples_read(2, [20], 0).tolist() == [40]  # full batches


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _timed(**overrides):
  base = dict(system__enabled=True, system__samples_per_second="100",
              system__bandwidth_bytes_per_second="50000", system__latency_seconds="0.1")
  return tiny_config(**{**base, **overrides})


def _mlp_bytes(hidden=16, inputs=64, classes=10):
  return 4 * (inputs * hidden + hidden + hidden * classes + classes)


def test_identical_ring_dpsgd_round_formula(tmp_path):
  # D-PSGD, K = 2 local steps of B = 8 (shards of digits hold >= 8 samples), ring of 4:
  # one round = K*B/speed + latency + 2 * model_bytes / bandwidth.
  train_and_evaluate(_timed(algorithm__name="dpsgd"), str(tmp_path))
  rows = _rows(tmp_path)
  per_round = 2 * 8 / 100 + 0.1 + 2 * _mlp_bytes() / 50000
  assert [r["round"] for r in rows] == [0, 2, 4]
  assert [r["sim_seconds"] for r in rows] == pytest.approx([0, 2 * per_round, 4 * per_round],
                                                           rel=1e-12)


def test_fedavg_end_to_end(tmp_path):
  # 4 identical clients, C = 0.5: m = 2 sampled; server 1e6 B/s, 0.05 s.
  train_and_evaluate(_timed(algorithm__name="fedavg", algorithm__client_fraction=0.5,
                            system__server_bandwidth_bytes_per_second=1e6), str(tmp_path))
  b = _mlp_bytes()
  per_round = 2 * 8 / 100 + 0.1 + b / 50000 + 0.05 + 2 * b / 1e6
  assert _rows(tmp_path)[-1]["sim_seconds"] == pytest.approx(4 * per_round, rel=1e-12)


def test_modest_reports_its_participants_and_aggregators():
  import jax
  from dfl.experiment import build_experiment
  exp = build_experiment(_timed(algorithm__name="modest", algorithm__sample_size=3,
                                algorithm__aggregators=2, algorithm__min_models=1))
  rounds = jax.numpy.arange(3, dtype=jax.numpy.int32)
  _, metrics = exp.run_chunk(exp.algorithm.init(exp.init_params), exp.data, exp.train_key,
                             rounds, exp_mixing(exp), False)
  assert np.asarray(metrics.trained_N).sum(axis=1).tolist() == [3, 3, 3]
  assert np.asarray(metrics.aggregator_N).sum(axis=1).tolist() == [2, 2, 2]


def exp_mixing(exp):
  from dfl.experiment import mixing_operator
  return mixing_operator(exp.topology, 0, False)


def test_compute_jitter_scales_each_round_by_the_keyed_factors():
  # Independent recomputation of the factors exp(sigma z - sigma^2/2) from the round keys.
  import jax
  from dfl.system.model import JITTER_STREAM
  sigma, key = 0.5, jax.random.key(11)
  system = _system([100, 50, 200], [1000, 500, 2000], [0.01, 0.02, 0.03], compute_jitter=sigma)
  clock = SimClock(system, "dpsgd", [20, 20, 20], 100, train_key=key)
  for _ in range(2):
    clock.add(_metrics([1, 2, 1], [1, 2, 1]))
  expected = 0.0
  for t in range(2):
    z = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, t),
                                                        JITTER_STREAM), (3,)), np.float64)
    factor = np.exp(sigma * z - sigma ** 2 / 2)
    expected += np.max(20 / np.array([100, 50, 200]) * factor + [0.11, 0.42, 0.08])
  assert clock.seconds == pytest.approx(expected, rel=1e-6)
  assert clock.rounds == 2
