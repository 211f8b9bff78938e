"""User errors on the command line: one line on stderr, exit status 2, no traceback.

Each case runs the real entry point in a subprocess and checks its exact output; bugs (any
other exception) and --debug still print the traceback.
"""
import os
import subprocess
import sys

import pytest

from dfl.algorithms import ALGORITHMS

from tests.conftest import REPO

DEFAULT = "experiments/configs/default.py"


def run(*args, env=None):
  full_env = {**os.environ, "DFL_DEBUG": "", **(env or {})}
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        env=full_env, timeout=300)


def error_lines(result):
  """stderr without absl's INFO lines (timestamps differ from run to run)."""
  return [l for l in result.stderr.splitlines() if l and not l.startswith("I1")]


def main_cmd(tmp_path, *overrides):
  return ("-m", "launch.main", f"--config={DEFAULT}", f"--workdir={tmp_path / 'w'}", *overrides)


@pytest.mark.parametrize("overrides, expected", [
    (("--config.algorithm.lrr=0.1",), "error: Unknown field algorithm.lrr; did you mean algorithm.lr?"),
    (("--config.algorithmx.lr=1",), "error: Unknown field algorithmx.lr; did you mean algorithm.lr?"),
    (("--config.algorithm.lr=abc",),
     "error: flag --config.algorithm.lr=abc: could not convert string to float: 'abc'"),
    (("--config.algorithm.lr=inf",), "error: algorithm.lr must be a finite number, got inf."),
    (("--config.algorithm.name=foo",),
     f"error: Unknown algorithm.name='foo'; valid: {sorted(ALGORITHMS)} or an import path "
     "'package.module:attribute'."),
])
def test_config_errors_are_one_line(tmp_path, overrides, expected):
  result = run(*main_cmd(tmp_path, *overrides))
  assert result.returncode == 2, result.stderr
  assert error_lines(result) == [expected]
  assert not (tmp_path / "w").exists()  # nothing written for a refused config


def test_missing_data_and_impossible_sizes(tmp_path):
  missing = run(*main_cmd(tmp_path, "--config.data.name=mnist",
                          f"--config.data.dir={tmp_path / 'nowhere'}"))
  assert missing.returncode == 2
  assert error_lines(missing) == [f"error: Data directory '{tmp_path / 'nowhere'}' does not exist "
                                  "(from config.data.dir or $DFL_DATA_DIR)."]
  huge = run(*main_cmd(tmp_path, "--config.num_nodes=10000000"))
  assert huge.returncode == 2
  assert error_lines(huge) == ["error: num_nodes=10000000 exceeds the 1438 training samples of "
                               "data.name='digits': every node needs at least one sample."]
  topology = run(*main_cmd(tmp_path, "--config.topology.name=random_regular",
                           "--config.topology.degree=3", "--config.num_nodes=5"))
  assert topology.returncode == 2
  assert error_lines(topology) == [
      "error: topology 'random_regular' needs 2 <= degree < num_nodes and degree * num_nodes "
      "even, got degree=3, num_nodes=5."]


def test_unwritable_workdir(tmp_path):
  (tmp_path / "a_file").write_text("")
  result = run("-m", "launch.main", f"--config={DEFAULT}",
               f"--workdir={tmp_path / 'a_file' / 'run'}", "--config.train.rounds=2")
  assert result.returncode == 2
  assert error_lines(result) == [
      f"error: cannot write: {tmp_path / 'a_file' / 'run'} (Not a directory); finished rounds "
      "and checkpoints already written are kept."]


def test_debug_shows_the_traceback(tmp_path):
  for extra, env in ((("--debug",), None), ((), {"DFL_DEBUG": "1"})):
    result = run(*main_cmd(tmp_path, "--config.algorithm.name=foo", *extra), env=env)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "Unknown algorithm.name='foo'" in result.stderr


def test_bugs_keep_their_traceback():
  code = ("from launch import cli\n"
          "def main(argv):\n  raise RuntimeError('a bug')\n"
          "cli.run(main)\n")
  result = run("-c", code)
  assert result.returncode == 1
  assert "Traceback" in result.stderr and "RuntimeError: a bug" in result.stderr


def test_sweep_values_are_checked_before_any_run(tmp_path):
  root = tmp_path / "sweep"
  result = run("-m", "launch.sweep", f"--config={DEFAULT}", f"--root={root}",
               "--sweep=algorithm.lr=0.1,-1", "--sweep=algorithm.batch_size=8,-1",
               "--config.train.rounds=2")
  assert result.returncode == 2
  assert error_lines(result) == [
      "error: launch.sweep: 2 problem(s) in the sweep's values, nothing was started:",
      "  algorithm.batch_size must be an integer >= 1, or 0 for full batches (the node's whole "
      "shard every step), got -1. (in 1 run(s), e.g. algorithm.lr=0.1__algorithm.batch_size=-1)",
      "  algorithm.lr must be > 0, got -1.0. (in 2 run(s), e.g. algorithm.lr=-1__algorithm.batch_size=8)"]
  assert not root.exists()  # no run was started, no workdir made


def test_print_config_lists_fields_with_defaults_and_comments():
  result = run("-m", "launch.main", "--config=experiments/configs/dfedsam_fmnist.py",
               "--print_config", "--config.algorithm.lr=0.3")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert "algorithm.lr = 0.3  (default: 0.1)" in lines
  assert "algorithm.lr_decay = 1.0  # eta_t = lr * lr_decay**t" in lines
  assert "num_nodes = 100  (default: 16)" in lines
  # Every field of the config appears exactly once.
  from launch.fields import flat_fields
  from experiments.configs import dfedsam_fmnist
  names = [l.split(" = ")[0] for l in lines]
  assert sorted(names) == sorted(flat_fields(dfedsam_fmnist.get_config()))
