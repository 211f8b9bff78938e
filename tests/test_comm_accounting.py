"""Communication accounting for every algorithm: totals and per-node maxima, by hand.

Small example: 4 nodes, digits (8x8 inputs), MLP 64-16-10, 4 rounds. One model is
(64*16 + 16 + 16*10 + 10) float32 = 1210 * 4 = 4840 bytes.
"""
import json

import pytest

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
