"""DFedSAM, DFedSAM-MGS and FedSAM run from config flags; bad values fail with clear errors."""
import json

import pytest

from dfl.config_checks import validate_config
from dfl.train import train_and_evaluate


@pytest.mark.parametrize("overrides", [
    {"algorithm__name": "dfedsam", "data__partition": "pathological",
     "data__classes_per_node": 3},
    {"algorithm__name": "dfedsam_mgs", "algorithm__gossip_steps": 3,
     "algorithm__local_epochs": 1, "algorithm__batch_size": 64},
    {"algorithm__name": "fedsam", "algorithm__local_epochs": 1, "algorithm__batch_size": 64,
     "algorithm__client_fraction": 0.5},
])
def test_runs_from_config(tiny, tmp_path, overrides):
  summary = train_and_evaluate(tiny(**overrides), str(tmp_path))
  assert 0.0 <= summary["final_test_accuracy"] <= 1.0
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert records[-1]["round"] == 4 and records[-1]["comm_transfers"] > 0
  if overrides["algorithm__name"] == "dfedsam_mgs":  # ring of 4: 8 transfers per gossip step
    assert records[-1]["comm_transfers"] == 4 * 3 * 8


@pytest.mark.parametrize("overrides,message", [
    ({"algorithm__rho": -0.1}, "algorithm.rho"),
    ({"algorithm__local_epochs": -1}, "algorithm.local_epochs"),
    ({"algorithm__name": "dfedavg", "algorithm__gossip_steps": 2}, "gossip_steps"),
    ({"algorithm__name": "dfedsam_mgs", "algorithm__gossip_steps": 0}, "gossip_steps"),
    ({"data__partition": "pathological", "data__classes_per_node": 11}, "classes_per_node"),
])
def test_bad_values_are_clear_errors(tiny, overrides, message):
  with pytest.raises(ValueError, match=message):
    validate_config(tiny(**overrides))


def test_dfedsam_with_several_gossip_steps_points_to_mgs(tiny, tmp_path):
  with pytest.raises(ValueError, match="dfedsam_mgs"):
    train_and_evaluate(tiny(algorithm__name="dfedsam", algorithm__gossip_steps=2), str(tmp_path))
