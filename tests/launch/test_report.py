"""launch.report on hand-made run directories: every number is checked against the files."""
import csv
import json
import math

import numpy as np
import pytest

from launch import report


def write_run(path, config, accuracies, comm_step, wall, finished=True):
  path.mkdir(parents=True)
  (path / "config.json").write_text(json.dumps(config))
  with open(path / "metrics.jsonl", "w") as f:
    for i, acc in enumerate(accuracies):
      f.write(json.dumps({"round": 5 * i, "test_accuracy": acc, "comm_bytes": comm_step * i,
                          "wall_seconds": wall * i / (len(accuracies) - 1)}) + "\n")
  if finished:
    (path / "summary.json").write_text(json.dumps({"wall_seconds": wall}))


def config(topology, seed):
  return {"seed": seed, "topology": {"name": topology, "weights": "mh"},
          "model": {"hidden": [16]}, "logging": {"tensorboard": seed == 1}}


@pytest.fixture
def runs_dir(tmp_path):
  curves = {("ring", 0): [0.1, 0.5, 0.7, 0.6], ("ring", 1): [0.1, 0.3, 0.6, 0.8],
            ("complete", 0): [0.1, 0.8, 0.9, 0.9], ("complete", 1): [0.1, 0.7, 0.85, 0.95]}
  for (topology, seed), accs in curves.items():
    write_run(tmp_path / f"{topology}__seed={seed}", config(topology, seed), accs,
              comm_step=1000 if topology == "ring" else 3000, wall=2.0 + seed)
  write_run(tmp_path / "unfinished", config("torus", 0), [0.1, 0.2], 10, 1.0, finished=False)
  return tmp_path, curves


def test_one_row_per_setting_with_stats_over_seeds(runs_dir):
  root, curves = runs_dir
  markdown, rows = report.make_report(str(root), target=0.75)
  assert [r["topology.name"] for r in rows] == ["complete", "ring"]  # torus is unfinished
  ring = rows[1]
  assert ring["seeds"] == 2
  assert ring["final_mean"] == pytest.approx(0.7)
  assert ring["final_std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
  assert ring["best_mean"] == pytest.approx(0.75)  # max(0.7) and max(0.8)
  assert ring["reached_target"] == 1 and ring["rounds_to_target_mean"] == 15  # seed 1, 4th eval
  assert rows[0]["reached_target"] == 2 and rows[0]["rounds_to_target_mean"] == 7.5  # rounds 5, 10
  assert ring["comm_bytes_mean"] == 3000 and rows[0]["comm_bytes_mean"] == 9000
  assert ring["wall_seconds_mean"] == pytest.approx(2.5)
  assert "| ring | 2 | 0.7000 ± 0.1414 | 0.7500 ± 0.0707 | 15.0 (1/2 seeds) |" in markdown
  assert "1 unfinished run(s) left out" in markdown
  with open(root / "report_test_accuracy.csv") as f:
    table = list(csv.DictReader(f))
  assert [r["topology.name"] for r in table] == ["complete", "ring"]
  assert float(table[1]["final_mean"]) == pytest.approx(0.7)
  assert (root / "report_test_accuracy.png").stat().st_size > 10_000


def test_unfinished_runs_included_on_request_and_target_optional(runs_dir):
  root, _ = runs_dir
  markdown, rows = report.make_report(str(root), include_unfinished=True, out=str(root / "out"))
  assert [r["topology.name"] for r in rows] == ["complete", "ring", "torus"]
  assert rows[2]["final_mean"] == pytest.approx(0.2) and rows[2]["seeds"] == 1
  assert "rounds to" not in markdown and "rounds_to_target_mean" not in rows[0]
  assert (root / "out" / "report_test_accuracy.csv").exists()


def test_no_runs_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="No finished runs"):
    report.make_report(str(tmp_path))
  assert math.isnan(report.setting_row(
      report.Setting({}, [report.RunResult("x", {}, [{"round": 0, "test_accuracy": 0.1,
                                                      "comm_bytes": 0, "wall_seconds": 0}], None)]),
      "test_accuracy", 0.5)["rounds_to_target_mean"])


def test_failed_starts_are_listed_and_keep_the_swept_column(tmp_path):
  # One setting finished; the other failed before writing config.json (only its run.log).
  write_run(tmp_path / "topology.name=ring", config("ring", 0), [0.1, 0.6], 10, 1.0)
  failed = tmp_path / "topology.name=torus"
  failed.mkdir()
  (failed / "run.log").write_text(
      "\n=== 2026-12-01 10:00:00 python -m launch.main --config=c.py --workdir=x "
      "--config.topology.name=torus\nerror: something\n")
  markdown, rows = report.make_report(str(tmp_path))
  assert rows[0]["topology.name"] == "ring"  # the swept column survives with one setting
  assert "| topology.name |" in markdown
  assert "1 run(s) failed before writing config.json, left out:" in markdown
  assert f"- topology.name=torus (log: {failed / 'run.log'})" in markdown


def test_batched_seed_logs_are_not_failed_starts(tmp_path):
  setting = tmp_path / "topology.name=ring"
  write_run(setting / "seed=0", config("ring", 0), [0.1, 0.6], 10, 1.0)
  (setting / "run.log").write_text("\n=== 2026-12-01 10:00:00 python -m launch.main --seeds=0\n")
  markdown, _ = report.make_report(str(tmp_path))
  assert "failed before" not in markdown


def test_reports_of_different_metrics_do_not_overwrite_each_other(runs_dir):
  root, _ = runs_dir
  report.make_report(str(root))
  for path in (root / "metrics_copy").parent.glob("*__seed=*/metrics.jsonl"):
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, "test_accuracy_local_mean": r["test_accuracy"] / 2})
                            + "\n" for r in lines))
  report.make_report(str(root), metric="test_accuracy_local_mean")
  assert (root / "report_test_accuracy.md").read_text() != (
      root / "report_test_accuracy_local_mean.md").read_text()
  assert "final test_accuracy_local_mean" in (root / "report_test_accuracy_local_mean.md").read_text()
  assert "final test_accuracy |" in (root / "report_test_accuracy.md").read_text()


def test_distances_are_better_lower_and_a_missing_metric_names_the_valid_ones(tmp_path):
  """A regression's runs report distance_to_optimum, no accuracy: best is the minimum, the
  target is reached going below it, and --metric=test_accuracy fails with the metrics there."""
  for seed, curve in ((0, [4.0, 1e-3, 1e-6, 1e-5]), (1, [4.0, 1e-2, 1e-4, 1e-8])):
    path = tmp_path / f"seed={seed}"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"seed": seed, "algorithm": {"name": "gt"}}))
    with open(path / "metrics.jsonl", "w") as f:
      for i, d in enumerate(curve):
        f.write(json.dumps({"round": 10 * i, "distance_to_optimum": d, "test_loss": d,
                            "comm_bytes": i, "wall_seconds": float(i)}) + "\n")
    (path / "summary.json").write_text(json.dumps({"wall_seconds": 3.0}))
  _, rows = report.make_report(str(tmp_path), metric="distance_to_optimum", target=1e-5)
  (row,) = rows
  assert row["best_mean"] == pytest.approx((1e-6 + 1e-8) / 2)
  assert row["final_mean"] == pytest.approx((1e-5 + 1e-8) / 2)
  assert row["rounds_to_target_mean"] == pytest.approx((20 + 30) / 2)
  with pytest.raises(report.UserError, match="'distance_to_optimum'"):
    report.make_report(str(tmp_path), metric="test_accuracy")
