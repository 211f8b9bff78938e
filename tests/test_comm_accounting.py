"""Communication accounting for every algorithm: totals and per-node maxima, by hand.

Small example: 4 nodes, digits (8x8 inputs), MLP 64-16-10, 4 rounds. One model is
(64*16 + 16 + 16*10 + 10) float32 = 1210 * 4 = 4840 bytes.
"""
import json
from typing import NamedTuple

import numpy as np
import pytest

from dfl import train
from dfl.train import train_and_evaluate

MODEL_BYTES = (64 * 16 + 16 + 16 * 10 + 10) * 4
ROUNDS = 4

# case -> (algorithm, config overrides, transfers per round, max models sent or received by one
# node per round (None: depends on which nodes are drawn), control messages per round).
CASES = {
    # Ring of 4: every node sends its model to its 2 neighbours once per round.
    "dpsgd": ("dpsgd", {}, 4 * 2, 2, 0),
    "dfedavg": ("dfedavg", {}, 4 * 2, 2, 0),
    "dfedavgm": ("dfedavgm", {}, 4 * 2, 2, 0),
    "gossip": ("gossip", {}, 4 * 2, 2, 0),
    # Server: 4 downloads + 4 uploads, one of each per client.
    "fedavg": ("fedavg", {"algorithm__client_fraction": 1.0}, 2 * 4, 1, 0),
    # s = 4, a = 2: 4 participants upload to 2 aggregators (8, less the 2 self-deliveries) and
    # the 2 aggregators send to the 4 next participants (8, less 2): 2sa - 2a = 12.
    # Control: 4 participants probe 2 candidates, 2 answer (4 * 4) and 2 aggregators probe
    # 4 candidates, 4 answer (2 * 8): 32.
    "modest_a2": ("modest", {"algorithm__sample_size": 4, "algorithm__aggregators": 2}, 12, None,
                  32),
    # s = a = 4: every node uploads to the 3 others and downloads from the 3 others: 24 = 2sa -
    # 2a; each node sends 6 and receives 6. Control: 8 probes + replies per node per role: 64.
    "modest_a4": ("modest", {"algorithm__sample_size": 4, "algorithm__aggregators": 4}, 24, 6,
                  64),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bytes_match_hand_computed(tiny, tmp_path, name):
  algorithm, overrides, per_round, max_node_per_round, control_per_round = CASES[name]
  config = tiny(algorithm__name=algorithm, **overrides)
  config.train.rounds = ROUNDS
  summary = train_and_evaluate(config, str(tmp_path))
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert summary["comm_bytes"] == per_round * ROUNDS * MODEL_BYTES
  if max_node_per_round is not None:
    assert summary["comm_bytes_max_node"] == max_node_per_round * ROUNDS * MODEL_BYTES
  for r in records:  # cumulative, at every evaluation
    assert r["comm_transfers"] == per_round * r["round"]
    assert r["comm_control_messages"] == control_per_round * r["round"]


def test_fedavg_partial_participation(tiny, tmp_path):
  config = tiny(algorithm__name="fedavg", algorithm__client_fraction=0.5)
  config.train.rounds = ROUNDS
  summary = train_and_evaluate(config, str(tmp_path))
  assert summary["comm_bytes"] == 2 * 2 * ROUNDS * MODEL_BYTES  # m = 2 clients, down + up


# Bytes per message instead of whole models. CHOCO top_k at ratio 0.1 keeps, per leaf, 102 of
# 1024, 1 of 16, 16 of 160 and 1 of 10 entries: 120 float32 values + 120 int32 indices = 960
# bytes. Push-sum sends the model and its float32 weight: 4844 bytes; on the directed
# exponential graph of 4 nodes each node receives from i + 1 and i + 2: 8 messages a round.
BYTE_CASES = {
    "choco_top_k": ({"algorithm__name": "choco", "algorithm__compressor": "top_k"}, 960),
    "push_sum": ({"algorithm__name": "push_sum", "topology__name": "exponential",
                  "topology__directed": True, "topology__weights": "column_uniform"},
                 MODEL_BYTES + 4),
}


@pytest.mark.parametrize("name", sorted(BYTE_CASES))
def test_message_bytes_by_hand(tiny, tmp_path, name):
  overrides, message = BYTE_CASES[name]
  config = tiny(**overrides)
  config.train.rounds = ROUNDS
  summary = train_and_evaluate(config, str(tmp_path))
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert summary["comm_bytes"] == 8 * ROUNDS * message
  assert summary["comm_bytes_max_node"] == 2 * ROUNDS * message
  assert [r["comm_transfers"] for r in records] == [8 * r["round"] for r in records]
  assert [r["comm_bytes"] for r in records] == [8 * message * r["round"] for r in records]
  # Mean bytes sent per node and round over each evaluation period; 0 before any round.
  assert [r["comm_bytes_per_node_round"] for r in records] == [0.0] + [2.0 * message] * 2


class FakeMetrics(NamedTuple):
  loss: np.ndarray
  transfers: np.ndarray
  sent_N: np.ndarray
  received_N: np.ndarray
  control_messages: int = 0
  message_bytes: object = None


def test_counter_weighs_each_round_by_its_message_bytes_and_resumes():
  # 3 nodes, 2 rounds: node 0 sends 2 messages a round, nodes 1 and 2 one each and receive 2.
  sent, received = np.array([[2, 1, 1]] * 2), np.array([[0, 2, 2]] * 2)
  counter = train.CommCounter(3, model_bytes=100)
  counter.add(FakeMetrics(np.zeros(2), np.array([4, 4]), sent, received))  # whole models
  assert counter.as_dict()["comm_bytes"] == 800
  assert counter.as_dict()["comm_bytes_per_node_round"] == pytest.approx(800 / 6)
  counter.add(FakeMetrics(np.zeros(2), np.array([4, 4]), sent, received,
                          message_bytes=np.array([10, 30])))
  d = counter.as_dict()
  assert d["comm_bytes"] == 800 + 4 * 10 + 4 * 30
  assert d["comm_bytes_max_node"] == 2 * 200 + 2 * 40  # node 0 sent, nodes 1 and 2 received
  assert d["comm_bytes_per_node_round"] == pytest.approx(160 / 6)
  assert d["comm_transfers"] == 16
  restored = train.CommCounter(3, model_bytes=100)
  restored.load_state_dict(json.loads(json.dumps(counter.state_dict())))
  assert restored.as_dict() == d
  # A checkpoint from before bytes were counted per message: every transfer was one model.
  old = train.CommCounter(3, model_bytes=100)
  old.load_state_dict({"transfers": 8, "control_messages": 0, "sent_N": [4, 2, 2],
                       "received_N": [0, 4, 4]})
  assert old.as_dict()["comm_bytes"] == 800 and old.as_dict()["comm_bytes_max_node"] == 400
