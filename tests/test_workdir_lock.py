"""One run per workdir (dfl/workdir_lock.py): real processes, stale locks, batched seeds, sweeps.

The process tests start `python -m launch.main` as tests/test_checkpoint_resume.py does and use
the driver's self-signal hook (checkpoint.TEST_SIGNAL_ENV) to hold a run at an exact point:
SIGSTOP keeps a live holder waiting while a second process tries the workdir, SIGKILL leaves a
stale lock, SIGTERM checks the release on preemption.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from dfl import checkpoint
from dfl.train import train_and_evaluate
from tests.conftest import run_seeds
from dfl.workdir_lock import LOCK_NAME, WorkdirLock, WorkdirLocked, hold, locked_by_other
from launch import sweep
from tests.conftest import tiny_config
from tests.test_checkpoint_resume import REPO, TINY, launch, metrics

HOST = socket.gethostname()


def popen(workdir, signal_at=None) -> subprocess.Popen:
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  env.pop(checkpoint.TEST_SIGNAL_ENV, None)
  if signal_at:
    env[checkpoint.TEST_SIGNAL_ENV] = signal_at
  command = [sys.executable, "-m", "launch.main", "--config", "experiments/configs/default.py",
             "--workdir", str(workdir), *TINY]
  return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def wait_stopped(proc, timeout_s=600):
  """Until `proc` has stopped itself (SIGSTOP from the hook)."""
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    with open(f"/proc/{proc.pid}/stat") as f:
      if f.read().rsplit(")", 1)[1].split()[0] == "T":
        return
    time.sleep(0.2)
  raise TimeoutError("the run never reached its stop point")


def lock_record(workdir) -> str:
  return (workdir / LOCK_NAME).read_text()


def test_second_process_fails_at_once_naming_the_holder_and_the_first_finishes(tmp_path):
  first = popen(tmp_path, signal_at="SIGSTOP:4:evaluated")  # holds the lock, stopped mid-run
  try:
    wait_stopped(first)
    assert json.loads(lock_record(tmp_path))["pid"] == first.pid
    before = (tmp_path / "metrics.jsonl").read_text()
    second = launch(tmp_path)
  finally:
    os.kill(first.pid, signal.SIGCONT)
  out, err = first.communicate(timeout=600)
  assert second.returncode != 0
  assert f"{tmp_path} is in use by pid {first.pid} on {HOST} (started " in second.stderr
  assert "use another --workdir" in second.stderr
  assert "dfl: dfedavg on ring" not in second.stderr  # failed before building anything
  assert first.returncode == 0, err[-3000:]
  # The second process wrote nothing: the first one's outputs are those of one whole run.
  rounds = [r["round"] for r in metrics(tmp_path)]
  assert rounds == list(range(0, 11, 2))
  assert (tmp_path / "metrics.jsonl").read_text().startswith(before)
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [8, 10]
  assert json.loads((tmp_path / "summary.json").read_text())["rounds"] == 10
  assert lock_record(tmp_path) == "" and locked_by_other(str(tmp_path)) is None  # released


def test_sigterm_releases_the_lock_and_a_sigkilled_holders_lock_is_taken_over(tmp_path):
  stopped = launch(tmp_path, signal_at="SIGTERM:2:evaluated")
  assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
  assert lock_record(tmp_path) == ""  # a clean release: nothing stale for the next run

  killed = popen(tmp_path, signal_at="SIGKILL:6:evaluated")
  _, err = killed.communicate(timeout=600)
  assert killed.returncode == -signal.SIGKILL, err[-3000:]
  assert "took over" not in err
  stale = json.loads(lock_record(tmp_path))
  assert stale["pid"] == killed.pid and stale["host"] == HOST

  finished = launch(tmp_path)
  assert finished.returncode == 0, finished.stderr[-3000:]
  assert (f"took over the stale lock of {tmp_path}: pid {killed.pid} on {HOST} (started "
          f"{stale['started']}) ended without releasing it (killed or crashed).") \
      in finished.stderr.splitlines()
  assert "resuming from the checkpoint of round" in finished.stderr
  assert lock_record(tmp_path) == ""


def test_lock_in_one_process_names_holder_and_is_released_on_exit(tmp_path, capsys):
  with WorkdirLock(str(tmp_path)) as lock:
    assert lock.held and lock.took_over is None
    holder = locked_by_other(str(tmp_path))
    assert holder["pid"] == os.getpid() and holder["host"] == HOST
    with pytest.raises(WorkdirLocked, match=rf"is in use by pid {os.getpid()} on {HOST} "
                                            r"\(started \d{4}-\d\d-\d\dT"):
      WorkdirLock(str(tmp_path)).acquire()  # a second open file: flock conflicts with it
  assert locked_by_other(str(tmp_path)) is None and lock_record(tmp_path) == ""
  assert "took over" not in capsys.readouterr().err

  record = {"pid": 999999, "host": "elsewhere", "started": "2026-01-02T03:04:05+00:00"}
  (tmp_path / LOCK_NAME).write_text(json.dumps(record))  # left by a holder that died
  with WorkdirLock(str(tmp_path)) as lock:
    assert lock.took_over == record
  assert capsys.readouterr().err == (
      f"took over the stale lock of {tmp_path}: pid 999999 on elsewhere (started "
      "2026-01-02T03:04:05+00:00) ended without releasing it (killed or crashed).\n")


def test_hold_takes_all_or_none(tmp_path):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  with WorkdirLock(b):
    with pytest.raises(WorkdirLocked, match="b is in use"):
      with hold([a, b]):
        pass
    assert locked_by_other(a) is None  # a was released when b failed


def test_locked_workdir_is_untouched_even_by_fresh_and_lock_released_after_an_error(tmp_path):
  workdir = str(tmp_path)
  train_and_evaluate(tiny_config(), workdir)
  outputs = sorted(os.listdir(workdir))
  with WorkdirLock(workdir):
    with pytest.raises(WorkdirLocked):
      train_and_evaluate(tiny_config(checkpoint__fresh=True), workdir)
  assert sorted(os.listdir(workdir)) == outputs  # checkpoint.fresh deleted nothing
  with pytest.raises(checkpoint.ConfigMismatchError):
    train_and_evaluate(tiny_config(algorithm__lr=0.5), workdir)
  assert locked_by_other(workdir) is None and lock_record(tmp_path) == ""  # released


def test_a_batch_locks_every_run_workdir(tmp_path):
  workdirs = [str(tmp_path / "seed=0"), str(tmp_path / "seed=1")]
  with WorkdirLock(workdirs[1]):
    with pytest.raises(WorkdirLocked, match=r"seed=1 is in use"):
      run_seeds(tiny_config(), [0, 1], workdirs)
  assert os.listdir(workdirs[0]) == [LOCK_NAME]  # nothing written, lock released
  assert locked_by_other(workdirs[0]) is None


def test_sweep_reports_a_locked_run_as_running_elsewhere_and_does_not_start_it(tmp_path):
  workdir = str(tmp_path / "x=1")
  marker = tmp_path / "started"
  run = sweep.Run("x=1", workdir, (sys.executable, "-c", f"open({str(marker)!r}, 'w')"),
                  (workdir,))
  with WorkdirLock(workdir):
    outcome = sweep.Executor(1).run_one(run)
  assert outcome.status == "running elsewhere"
  assert f"locked by pid {os.getpid()} on {HOST}" in outcome.tail
  assert not marker.exists() and not os.path.exists(os.path.join(workdir, sweep.LOG_NAME))
  lines = []
  sweep.summarize([outcome], 0, report=lines.append)
  assert "0 failed, 1 running elsewhere" in lines[0]
  assert sweep.Executor(1).run_one(run).status == "failed" and marker.exists()  # unlocked: runs
