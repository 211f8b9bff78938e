"""launch.sweep for real: launch.main subprocesses on digits with a tiny model.

Few subprocesses on purpose (each starts JAX, ~3-10 s): a 2x2x2 sweep, run twice, and a 2-run
sweep with one bad override.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from launch import report

TINY = ["--config.num_nodes=4", "--config.model.hidden=(16,)", "--config.algorithm.local_steps=2",
        "--config.algorithm.batch_size=8", "--config.train.rounds=4", "--config.eval.every_rounds=2",
        "--config.eval.local_examples=100"]


def sweep(root, *args):
  cmd = [sys.executable, "-m", "launch.sweep", "--config=experiments/configs/default.py",
         f"--root={root}", "--parallel=2", *args, *TINY]
  # Cache even the tiny programs of this test (by default only those compiling for > 1 s).
  env = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


def test_sweep_runs_skips_finished_and_report_matches_metrics(tmp_path):
  axes = ["--sweep=topology.name=ring,complete", "--sweep=algorithm.name=dfedavg,dpsgd", "--seeds=0,1",
          "--batch=none"]  # one process (and run.log) per run
  first = sweep(tmp_path, *axes)
  assert first.returncode == 0, first.stdout + first.stderr
  assert "8 done, 0 already finished (skipped), 0 failed" in first.stdout
  assert os.listdir(tmp_path / ".jax_cache")  # the runs shared a compilation cache
  settings = sorted(n for n in os.listdir(tmp_path) if n.startswith("topology"))
  assert len(settings) == 4 and "topology.name=ring__algorithm.name=dpsgd" in settings
  names = [f"{s}/seed={seed}" for s in settings for seed in (0, 1)]
  logs = {n: os.path.getmtime(tmp_path / n / "run.log") for n in names}

  second = sweep(tmp_path, *axes)
  assert second.returncode == 0, second.stdout + second.stderr
  assert "0 done, 8 already finished (skipped), 0 failed" in second.stdout
  assert logs == {n: os.path.getmtime(tmp_path / n / "run.log") for n in names}

  # Each run really got its overrides.
  config = json.loads((tmp_path / "topology.name=complete__algorithm.name=dpsgd" / "seed=1" /
                       "config.json").read_text())
  assert (config["topology"]["name"], config["algorithm"]["name"], config["seed"]) == ("complete", "dpsgd", 1)

  # The report's rows, recomputed here from the metrics files.
  _, rows = report.make_report(str(tmp_path), target=0.15)
  assert [(r["algorithm.name"], r["topology.name"], r["seeds"]) for r in rows] == [
      ("dfedavg", "complete", 2), ("dfedavg", "ring", 2), ("dpsgd", "complete", 2), ("dpsgd", "ring", 2)]
  for row in rows:
    records = [[json.loads(l) for l in open(tmp_path / (f"topology.name={row['topology.name']}__"
                                                         f"algorithm.name={row['algorithm.name']}/seed={s}")
                                            / "metrics.jsonl")] for s in (0, 1)]
    final = [r[-1]["test_accuracy"] for r in records]
    assert row["final_mean"] == pytest.approx(np.mean(final))
    assert row["final_std"] == pytest.approx(np.std(final, ddof=1))
    assert row["best_mean"] == pytest.approx(np.mean([max(x["test_accuracy"] for x in r) for r in records]))
    assert row["comm_bytes_mean"] == records[0][-1]["comm_bytes"] > 0
    reached = [next((x["round"] for x in r if x["test_accuracy"] >= 0.15), None) for r in records]
    reached = [t for t in reached if t is not None]
    assert row["reached_target"] == len(reached)
  assert (tmp_path / "report_test_accuracy.png").exists() and (tmp_path / "report_test_accuracy.csv").exists()


def test_a_failing_run_is_reported_and_the_others_complete(tmp_path):
  # Valid values, but one run's data is missing: it fails when it starts, the other completes.
  result = sweep(tmp_path / "root", "--sweep=data.name=mnist,digits",
                 f"--config.data.dir={tmp_path / 'no_data'}")
  root = tmp_path / "root"
  assert result.returncode == 1
  assert "1 done, 0 already finished (skipped), 1 failed" in result.stdout
  assert "FAILED data.name=mnist" in result.stdout
  assert "does not exist" in result.stdout  # the run's own error, from its log
  assert (root / "data.name=digits" / "summary.json").exists()
  assert not (root / "data.name=mnist" / "summary.json").exists()
  assert "error: Data directory" in (root / "data.name=mnist" / "run.log").read_text()


def test_a_bad_value_stops_the_sweep_before_any_run(tmp_path):
  result = sweep(tmp_path, "--sweep=topology.name=nosuchgraph,ring")
  assert result.returncode == 2
  assert "Unknown topology.name='nosuchgraph'" in result.stderr
  assert not (tmp_path / "topology.name=ring").exists()


def test_a_grid_runs_as_batches_and_equals_one_process_per_run(tmp_path):
  """lr x seed share one program; the two algorithms land in two batches. Each run's outputs are
  those of its separate run (float32 tolerance: the batch vmaps the round over runs)."""
  grid = ["--sweep=algorithm.name=dfedavg,gossip", "--sweep=algorithm.lr=0.05,0.1", "--seeds=0,1"]
  result = sweep(tmp_path / "batched", *grid)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "Sweep: 8 runs" in result.stdout and "in 2 processes" in result.stdout
  assert "8 done, 0 already finished (skipped), 0 failed" in result.stdout
  batches = sorted(os.listdir(tmp_path / "batched" / "_batches"))
  assert len(batches) == 2
  runs = json.loads((tmp_path / "batched" / "_batches" / batches[0] / "runs.json").read_text())
  assert len(runs) == 4
  separate = sweep(tmp_path / "separate", *grid, "--batch=none")
  assert "in 2 processes" not in separate.stdout and "8 done" in separate.stdout
  for path in (tmp_path / "separate").rglob("summary.json"):
    twin = tmp_path / "batched" / path.relative_to(tmp_path / "separate")
    a, b = json.loads(path.read_text()), json.loads(twin.read_text())
    assert set(a) == set(b)
    assert b["final_test_accuracy"] == pytest.approx(a["final_test_accuracy"], rel=1e-5)
    assert b["comm_bytes"] == a["comm_bytes"]
  again = sweep(tmp_path / "batched", *grid)  # finished runs are skipped, batched or not
  assert "0 done, 8 already finished (skipped), 0 failed" in again.stdout
  report = subprocess.run([sys.executable, "-m", "launch.report", str(tmp_path / "batched")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert report.returncode == 0 and "failed before" not in report.stdout, report.stdout


def test_sigterm_stops_the_runs_reports_them_interrupted_and_they_resume(tmp_path):
  import signal
  import time
  cmd = [sys.executable, "-m", "launch.sweep", "--config=experiments/configs/default.py",
         f"--root={tmp_path}", "--parallel=2", "--seeds=0,1,2", "--batch=none", *TINY,
         "--config.train.rounds=1000000", "--config.checkpoint.every_rounds=1000000"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.time() + 300
    running = [tmp_path / "base" / f"seed={s}" / "metrics.jsonl" for s in (0, 1)]
    while not all(p.exists() and p.stat().st_size for p in running):  # both runs are training
      assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else ""
      time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
  finally:
    proc.kill()
  assert proc.returncode == 128 + signal.SIGTERM, out
  assert "0 done, 0 already finished (skipped), 0 failed, 2 interrupted, 1 not started" in out, out
  assert "run the same command again to resume" in out
  for seed in (0, 1):  # each stopped run wrote a checkpoint on the way out
    assert os.listdir(tmp_path / "base" / f"seed={seed}" / "checkpoints"), seed
  pending = subprocess.run(cmd + ["--emit=commands"], cwd=REPO, capture_output=True, text=True)
  assert pending.returncode == 0 and len(pending.stdout.strip().splitlines()) == 3


def test_a_run_stopped_after_its_summary_is_done_not_interrupted(tmp_path):
  """A late Ctrl-C: the run had written summary.json when the sweep's SIGTERM reached it."""
  import threading
  from launch import sweep
  workdir = tmp_path / "run"
  script = (f"import json, time; open({str(workdir / 'summary.json')!r}, 'w').write('{{}}'); "
            "time.sleep(30)")
  run = sweep.Run("run", str(workdir), (sys.executable, "-c", script), (str(workdir),))
  executor = sweep.Executor(parallel=1)

  def stop_once_finished():
    while not (workdir / "summary.json").exists():
      threading.Event().wait(0.05)
    executor.stop()
  threading.Thread(target=stop_once_finished, daemon=True).start()
  outcome = executor.run_one(run)
  assert outcome.returncode != 0  # it was killed ...
  assert outcome.status == "done"  # ... but had finished
