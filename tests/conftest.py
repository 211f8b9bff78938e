"""Shared test fixtures: small configs and the location of the real datasets."""
import os
import pathlib

import pytest

from dfl.algorithms import ONE_GRADIENT_PER_ROUND
from experiments.configs import default

REPO = pathlib.Path(__file__).resolve().parents[1]


# CI sets this so that a missing dataset fails the suite instead of skipping its tests.
REQUIRE_DATA_VARIABLE = "DFL_REQUIRE_DATA"


def find_shared_data() -> pathlib.Path | None:
  """$DFL_DATA_DIR, else the nearest `shared/data` beside the repository or one of its parents;
  None unless the folder holds mnist/."""
  if os.environ.get("DFL_DATA_DIR"):
    candidates = [pathlib.Path(os.environ["DFL_DATA_DIR"])]
  else:
    candidates = [parent / "shared" / "data" for parent in [REPO, *REPO.parents]]
  return next((c for c in candidates if (c / "mnist").is_dir()), None)


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
  """The real-data folder; its tests skip on a machine without it, and fail in CI."""
  path = find_shared_data()
  if path is None:
    where = (f"DFL_DATA_DIR={os.environ['DFL_DATA_DIR']} holds no mnist/ folder"
             if os.environ.get("DFL_DATA_DIR") else "no shared/data/ beside the repository")
    message = (f"Real MNIST / Fashion-MNIST not found ({where}); to run this test set "
               "DFL_DATA_DIR to a folder holding mnist/ and fashion_mnist/ with the original "
               "IDX files.")
    if os.environ.get(REQUIRE_DATA_VARIABLE):
      pytest.fail(f"{message} ({REQUIRE_DATA_VARIABLE} is set: CI requires the data.)")
    pytest.skip(message)
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
  if c.algorithm.name in ONE_GRADIENT_PER_ROUND and "algorithm__local_steps" not in overrides:
    c.algorithm.local_steps = None  # exact diffusion and QGM take one gradient per round
  return c


@pytest.fixture
def tiny():
  return tiny_config
