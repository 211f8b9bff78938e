"""launch.report's simulated time to target, on hand-made run directories."""
import json

import pytest

from launch import report


def _run(path, topology, seed, accuracies, seconds_per_eval):
  path.mkdir(parents=True)
  (path / "config.json").write_text(json.dumps({"seed": seed, "topology": {"name": topology}}))
  with open(path / "metrics.jsonl", "w") as f:
    for i, acc in enumerate(accuracies):
      f.write(json.dumps({"round": 5 * i, "test_accuracy": acc, "comm_bytes": 10 * i,
                          "wall_seconds": 0.1 * i, "sim_seconds": seconds_per_eval * i}) + "\n")
  (path / "summary.json").write_text(json.dumps({"wall_seconds": 1.0}))


def test_sim_seconds_to_target_per_setting(tmp_path):
  _run(tmp_path / "ring0", "ring", 0, [0.1, 0.5, 0.8, 0.9], 2.0)   # reaches 0.75 at eval 2: 4 s
  _run(tmp_path / "ring1", "ring", 1, [0.1, 0.8, 0.8, 0.9], 3.0)   # at eval 1: 3 s
  _run(tmp_path / "full0", "complete", 0, [0.1, 0.2, 0.3, 0.4], 1.0)  # never
  markdown, rows = report.make_report(str(tmp_path), target=0.75)
  by = {r["topology.name"]: r for r in rows}
  assert by["ring"]["sim_seconds_to_target_mean"] == pytest.approx(3.5)
  assert by["ring"]["rounds_to_target_mean"] == pytest.approx(7.5)
  assert "sim s to 0.75" in markdown and "| 3.5 ± 0.7 |" in markdown
  assert by["complete"]["reached_target"] == 0
  assert report.time_to_target([{"round": 0, "test_accuracy": 0.9}], "test_accuracy", 0.5) is None
