"""Tests that need the real datasets skip on a user's machine without them and fail in CI."""
import os
import subprocess
import sys

from tests.conftest import REPO, REQUIRE_DATA_VARIABLE

REAL_DATA_TEST = "tests/data/test_data.py::test_mnist_reader_on_real_files"


def run_pytest(tmp_path, require: bool):
  env = {k: v for k, v in os.environ.items() if k != REQUIRE_DATA_VARIABLE}
  env["DFL_DATA_DIR"] = str(tmp_path / "no_data_here")
  if require:
    env[REQUIRE_DATA_VARIABLE] = "1"
  return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                         REAL_DATA_TEST], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)


def test_missing_data_skips_with_how_to_enable(tmp_path):
  result = run_pytest(tmp_path, require=False)
  assert result.returncode == 0, result.stdout
  assert "1 skipped" in result.stdout
  assert "holds no mnist/ folder" in result.stdout and "set DFL_DATA_DIR" in result.stdout


def test_missing_data_fails_when_ci_requires_it(tmp_path):
  result = run_pytest(tmp_path, require=True)
  assert result.returncode == 1
  assert "1 error" in result.stdout and "CI requires the data" in result.stdout
