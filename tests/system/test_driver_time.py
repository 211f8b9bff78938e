"""The clock in the driver: off changes nothing, on changes no figure, resume is exact."""
import json
import os

import pytest

from dfl.train import train_and_evaluate
from tests.conftest import tiny_config

TIME_KEYS = {"sim_seconds", "dropped_update_fraction", "wall_seconds"}
HETEROGENEOUS = dict(system__enabled=True,
                     system__samples_per_second="lognormal:mean=200,sigma=0.8",
                     system__bandwidth_bytes_per_second="uniform:2e4,1e5",
                     system__latency_seconds="uniform:0.01,0.2")


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _figures(rows):
  return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


@pytest.mark.parametrize("algorithm", ["dfedavg", "fedavg"])
def test_disabled_has_no_sim_seconds_and_enabled_changes_no_figure(tmp_path, algorithm):
  off = tiny_config(algorithm__name=algorithm, algorithm__client_fraction=0.5)
  del off["system"]  # a config from before the section existed
  train_and_evaluate(off, str(tmp_path / "absent"))
  train_and_evaluate(tiny_config(algorithm__name=algorithm, algorithm__client_fraction=0.5),
                     str(tmp_path / "off"))
  train_and_evaluate(tiny_config(algorithm__name=algorithm, algorithm__client_fraction=0.5,
                                 **HETEROGENEOUS), str(tmp_path / "on"))
  absent, disabled, on = (_rows(tmp_path / d) for d in ("absent", "off", "on"))
  assert not any("sim_seconds" in r for r in absent + disabled)
  assert _figures(absent) == _figures(disabled) == _figures(on)
  assert 0 == on[0]["sim_seconds"] < on[1]["sim_seconds"] < on[2]["sim_seconds"]


def test_resume_keeps_sim_seconds_exact(tmp_path):
  overrides = dict(HETEROGENEOUS, system__deadline_seconds=0.25, system__compute_jitter=0.5,
                   eval__every_rounds=1, train__rounds=4)
  train_and_evaluate(tiny_config(**overrides), str(tmp_path / "whole"))
  train_and_evaluate(tiny_config(**{**overrides, "train__rounds": 2}), str(tmp_path / "split"))
  train_and_evaluate(tiny_config(**overrides), str(tmp_path / "split"))  # resumes at round 2
  whole, split = _rows(tmp_path / "whole"), _rows(tmp_path / "split")
  assert [r["round"] for r in split] == [0, 1, 2, 3, 4]
  strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rows]
  assert strip(split) == strip(whole)  # sim_seconds and dropped_update_fraction bit for bit
  assert any(r["dropped_update_fraction"] > 0 for r in whole[1:])  # the deadline bites


def test_async_gossip_runs_and_counts_ticks(tmp_path):
  train_and_evaluate(tiny_config(algorithm__name="async_gossip", algorithm__interval_jitter=0.2,
                                 **HETEROGENEOUS), str(tmp_path))
  rows = _rows(tmp_path)
  tick = rows[1]["sim_seconds"] / 2
  assert tick > 0 and rows[2]["sim_seconds"] == pytest.approx(4 * tick, rel=1e-12)
