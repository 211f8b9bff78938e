"""Checkpoint failures end in one clear line: corrupt checkpoints, none readable, a full disk.

Each failure runs in a subprocess (Orbax's leftovers show at interpreter shutdown, and a full
disk is a real tmpfs where the machine allows one), and the test asserts on its whole stderr:
the expected warning lines and the final line, and nothing else (no traceback, no Orbax or
asyncio noise). The subprocess calls dfl.train.train_and_evaluate and prints the message of the
CheckpointError it raises, as launch.main does.
"""
import errno
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from dfl import checkpoint
from dfl.train import train_and_evaluate
from tests.conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]

WORKER = r"""
import errno, os, sys
from absl import logging
logging.set_verbosity(logging.WARNING)  # the driver's INFO lines are not what is tested
from dfl import checkpoint
from dfl.train import train_and_evaluate
from tests.conftest import tiny_config

workdir, mode = sys.argv[1], sys.argv[2]
if mode == "enospc_at_round_4":  # every file Orbax writes for round 4 fails as on a full disk
  from etils.epath import abstract_path
  for name in ("write_text", "write_bytes"):
    def failing(self, *args, _original=getattr(abstract_path.Path, name), **kwargs):
      if f"{os.sep}checkpoints{os.sep}4" in str(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
      return _original(self, *args, **kwargs)
    setattr(abstract_path.Path, name, failing)
hidden = (64,) if mode == "tmpfs" else (16,)
try:
  train_and_evaluate(tiny_config(checkpoint__every_rounds=2, model__hidden=hidden), workdir)
except checkpoint.CheckpointError as e:
  print(e, file=sys.stderr)
  sys.exit(3)
"""


def tiny():
  return tiny_config(checkpoint__every_rounds=2)


def run_worker(workdir, mode, wrap=()) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  env.pop(checkpoint.TEST_SIGNAL_ENV, None)
  command = [*wrap, sys.executable, "-c", WORKER, str(workdir), mode]
  return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def stderr_lines(result) -> list[str]:
  """stderr without the progress bar (its redraws are separated by \r)."""
  assert "Traceback" not in result.stderr, result.stderr[-5000:]
  return [line for line in result.stderr.splitlines()
          if line.strip() and not re.match(r"dfedavg/ring: ( +\d+%\||round \d+/\d+)", line)]


def garble_arrays(step_dir) -> int:
  """Overwrites every array data file of a checkpoint's state with random bytes."""
  count = 0
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    if os.path.basename(root) == "d":
      for name in files:
        path = os.path.join(root, name)
        with open(path, "r+b") as f:
          f.write(os.urandom(os.path.getsize(path)))
        count += 1
  return count


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished tiny run with checkpoints at rounds 2 and 4."""
  workdir = tmp_path_factory.mktemp("finished")
  train_and_evaluate(tiny(), str(workdir))
  return workdir


def test_corrupt_latest_checkpoint_gives_one_warning_line_and_the_run_completes(finished,
                                                                                tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished, workdir)
  assert garble_arrays(workdir / "checkpoints" / "4") > 0
  result = run_worker(workdir, "plain")
  assert result.returncode == 0, result.stderr[-5000:]
  warning, resuming = stderr_lines(result)  # exactly these two lines
  assert re.fullmatch(
      r"warning: the checkpoint of round 4 is unreadable \(\w+: .{10,}\); moved it to "
      + re.escape(str(workdir / "checkpoints_corrupt" / "4"))
      + r" \(kept for inspection\) and resuming from round 2\.", warning), warning
  assert resuming == f"resuming from the checkpoint of round 2 in {workdir / 'checkpoints'}"
  assert (workdir / "checkpoints_corrupt" / "4").is_dir()
  assert "final test accuracy" in result.stdout


def test_no_readable_checkpoint_is_one_line_and_nothing_moves(finished, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished, workdir)
  for r in (2, 4):
    garble_arrays(workdir / "checkpoints" / str(r))
  result = run_worker(workdir, "plain")
  assert result.returncode == 3, result.stderr[-5000:]
  [line] = stderr_lines(result)
  assert re.fullmatch(
      re.escape(f"No checkpoint in {workdir / 'checkpoints'} can be read back (rounds 4, 2; the "
                "newest fails with ") + r"\w+: .{10,}" + re.escape(
          "). Kept: all of them, nothing was moved or deleted. Inspect them, or add "
          "--config.checkpoint.fresh=True to discard them and start over."), line), line
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  assert not (workdir / "checkpoints_corrupt").exists()


def test_full_disk_on_a_save_names_the_kept_checkpoint_and_resuming_works(tmp_path):
  workdir = tmp_path / "run"
  result = run_worker(workdir, "enospc_at_round_4")
  assert result.returncode == 3, result.stderr[-5000:]
  [line] = stderr_lines(result)
  assert line == (
      f"No space left on device (or quota exceeded) while writing the checkpoint of round 4 in "
      f"{workdir}. Kept: the checkpoint of round 2 (the newest complete one). Free space there "
      "(or move the workdir to a disk with room) and run the same command again to resume from "
      "round 2.")
  # What the line promises: the same run, with room again, resumes from round 2 and finishes.
  summary = train_and_evaluate(tiny(), str(workdir))
  reference = train_and_evaluate(tiny(), str(tmp_path / "reference"))
  assert {k: v for k, v in summary.items() if k != "wall_seconds"} == \
      {k: v for k, v in reference.items() if k != "wall_seconds"}


def _tmpfs_wrapper(mountpoint) -> tuple:
  """A command prefix running the worker with a 60 KiB tmpfs on `mountpoint`, in a private mount
  namespace (gone when the process ends); () where this machine does not allow it."""
  wrap = ("unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=60k tmpfs {mountpoint} && "
          'exec "$@"', "sh")
  if shutil.which("unshare") is None:
    return ()
  probe = subprocess.run([*wrap, "true"], capture_output=True)
  return wrap if probe.returncode == 0 else ()


def test_really_full_disk_is_one_line_saying_no_space_left(tmp_path):
  mountpoint = tmp_path / "small_disk"
  mountpoint.mkdir()
  wrap = _tmpfs_wrapper(mountpoint)
  if not wrap:
    pytest.skip("cannot mount a tmpfs here (needs unshare -m and mount privileges)")
  workdir = mountpoint / "run"
  result = run_worker(workdir, "tmpfs", wrap)  # TensorStore fails with RESOURCE_EXHAUSTED
  assert result.returncode == 3, result.stderr[-5000:]
  [line] = stderr_lines(result)
  assert line == (
      f"No space left on device (or quota exceeded) while writing the checkpoint of round 2 in "
      f"{workdir}. Kept: no checkpoint (none was complete yet). Free space there (or move the "
      "workdir to a disk with room) and run the same command again to start it again from "
      "round 0.")


def test_disk_full_is_recognised_through_wrapping_and_only_then():
  enospc = OSError(errno.ENOSPC, "No space left on device")
  wrapped = RuntimeError("save failed")
  wrapped.__cause__ = enospc
  tensorstore = ValueError(
      'RESOURCE_EXHAUSTED: Error writing "params.w/0.0" in OCDBT database at local file "/w/": '
      'Failed writing: "/w/d/ab": Failed to write 32728 bytes to file 8 [os_error_code=\'28\']')
  tensorstore_bare = ValueError('RESOURCE_EXHAUSTED: Error writing "params.w/0.0": failed')
  quota = OSError(errno.EDQUOT, "Disk quota exceeded")
  for error in (enospc, wrapped, tensorstore, tensorstore_bare, quota):
    assert checkpoint.is_disk_full(error), error
  not_full = [OSError(errno.EMFILE, "Too many open files"), ValueError("DATA_LOSS: bad bytes"),
              ValueError("RESOURCE_EXHAUSTED: Too many open files while writing"),
              MemoryError("RESOURCE_EXHAUSTED: out of memory allocating 12 bytes")]
  for error in not_full:
    assert not checkpoint.is_disk_full(error), error
