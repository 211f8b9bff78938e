"""Shared test fixtures: small configs and the location of the real datasets."""
import os
import pathlib

import pytest

from experiments.configs import default

REPO = pathlib.Path(__file__).resolve().parents[1]


def find_shared_data() -> pathlib.Path | None:
  """$DFL_DATA_DIR, else the nearest `shared/data` beside the repository or one of its parents."""
  if os.environ.get("DFL_DATA_DIR"):
    return pathlib.Path(os.environ["DFL_DATA_DIR"])
  for parent in [REPO, *REPO.parents]:
    candidate = parent / "shared" / "data"
    if (candidate / "mnist").is_dir():
      return candidate
  return None


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
  path = find_shared_data()
  if path is None:
    pytest.fail("Real datasets not found: set DFL_DATA_DIR or place shared/data beside the repo.")
  return path


def tiny_config(**overrides):
  """A few-second config: 4 nodes on digits, a small MLP, few rounds."""
  c = default.get_config()
  c.num_nodes = 4
  c.model.hidden = (16,)
  c.algorithm.local_steps = 2
  c.algorithm.batch_size = 8
  c.train.rounds = 4
  c.eval.every_rounds = 2
  c.eval.local_examples = 100
  for dotted, value in overrides.items():
    node = c
    *path, leaf = dotted.split("__")
    for p in path:
      node = node[p]
    node[leaf] = value
  return c


@pytest.fixture
def tiny():
  return tiny_config
