"""End to end, in subprocesses: a run killed (SIGKILL) or preempted (SIGTERM) at exact points and
resumed with the same command ends bit for bit where an uninterrupted run ends (CPU).

The kill points come from the driver's test hook (checkpoint.TEST_SIGNAL_ENV): the process
signals itself right after a round's metrics line is written ("evaluated": earlier checkpoints
complete, this round's not started) or right after its asynchronous save has started ("saving").
"""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dfl.checkpoint import TEST_SIGNAL_ENV

REPO = pathlib.Path(__file__).resolve().parents[1]
ROUNDS = 10
TINY = ["--config.num_nodes=4", "--config.model.hidden=(16,)", "--config.algorithm.local_steps=2",
        "--config.algorithm.batch_size=8", "--config.eval.local_examples=100",
        f"--config.train.rounds={ROUNDS}", "--config.eval.every_rounds=2",
        "--config.checkpoint.every_rounds=2", "--config.checkpoint.max_to_keep=2"]


def launch(workdir, *flags, signal_at=None) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  env.pop(TEST_SIGNAL_ENV, None)
  if signal_at:
    env[TEST_SIGNAL_ENV] = signal_at
  command = [sys.executable, "-m", "launch.main", "--config", "experiments/configs/default.py",
             "--workdir", str(workdir), *TINY, *flags]
  return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def metrics(workdir) -> list[dict]:
  with open(workdir / "metrics.jsonl") as f:
    return [{k: v for k, v in json.loads(line).items() if k != "wall_seconds"} for line in f]


def checkpoint_rounds(workdir) -> list[int]:
  return sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())


def outcome(workdir) -> tuple:
  """Final state (from the last checkpoint), metrics and summary, wall-clock times left out."""
  state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(ROUNDS) / "state")
  with open(workdir / "summary.json") as f:
    summary = {k: v for k, v in json.load(f).items() if k != "wall_seconds"}
  return state, metrics(workdir), summary


def assert_identical(result, expected):
  (state, records, summary), (state0, records0, summary0) = result, expected
  assert jax.tree.structure(state) == jax.tree.structure(state0)
  jax.tree.map(np.testing.assert_array_equal, state, state0)  # bit for bit
  assert [r["round"] for r in records] == list(range(0, ROUNDS + 1, 2))  # each once, no gaps
  assert records == records0
  assert summary == summary0


def run_ok(workdir, *flags):
  result = launch(workdir, *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  run_ok(workdir)
  return outcome(workdir)


def resumed_from(result) -> int:
  found = re.search(r"resuming from the checkpoint of round (\d+)", result.stderr)
  assert found, result.stderr[-3000:]
  return int(found.group(1))


def test_sigkill_at_several_points_then_resume_is_bit_identical(uninterrupted, tmp_path):
  killed = launch(tmp_path, signal_at="SIGKILL:4:evaluated")  # round 4 logged, not checkpointed
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert [r["round"] for r in metrics(tmp_path)] == [0, 2, 4]
  assert checkpoint_rounds(tmp_path) == [2]  # metrics.jsonl is ahead of the checkpoints

  killed = launch(tmp_path, signal_at="SIGKILL:6:saving")  # killed while writing round 6
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert resumed_from(killed) == 2

  killed = launch(tmp_path, signal_at="SIGKILL:8:evaluated")
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert resumed_from(killed) in (4, 6)  # 6 if its asynchronous save completed before the kill

  finished = run_ok(tmp_path)
  assert resumed_from(finished) == 6
  assert_identical(outcome(tmp_path), uninterrupted)


def test_sigterm_writes_a_checkpoint_then_resume_is_bit_identical(uninterrupted, tmp_path):
  # Periodic checkpoints every 4 rounds, so the one at round 6 is written for the signal.
  flags = ["--config.checkpoint.every_rounds=4"]
  stopped = launch(tmp_path, *flags, signal_at="SIGTERM:6:evaluated")
  assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
  assert "Stopped by SIGTERM after round 6 of 10" in stopped.stderr
  assert f"Resume: python -m launch.main --config experiments/configs/default.py --workdir " \
         f"{tmp_path}" in stopped.stderr
  assert checkpoint_rounds(tmp_path) == [4, 6]
  assert [r["round"] for r in metrics(tmp_path)] == [0, 2, 4, 6]

  resumed = run_ok(tmp_path, *flags)
  assert "resuming from the checkpoint of round 6" in resumed.stderr
  assert_identical(outcome(tmp_path), uninterrupted)
