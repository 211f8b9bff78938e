"""Shared test fixtures: small configs and the location of the real datasets."""
import copy
import getpass
import os
import pathlib
import tempfile

# Tests compile far more than they run (tiny shapes, a few rounds): XLA's backend optimisation
# passes are most of a compile and buy nothing at these sizes, so the suite turns them off for
# itself and the subprocesses it starts (they inherit the environment): 81 s -> 46 s for three
# batched-seed tests, cold. Every comparison in the suite is between runs under the same flags,
# or against numpy with a tolerance. DFL_TEST_XLA_OPTIMIZE=1 keeps the optimisations.
_NO_BACKEND_OPT = "--xla_backend_optimization_level=0"
if (os.environ.get("DFL_TEST_XLA_OPTIMIZE") != "1"
    and _NO_BACKEND_OPT not in os.environ.get("XLA_FLAGS", "")):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " " + _NO_BACKEND_OPT).strip()

import jax  # noqa: E402  (after XLA_FLAGS: the backend reads them when it starts)
import pytest  # noqa: E402

from dfl.algorithms import ONE_GRADIENT_PER_ROUND
from experiments.configs import default

REPO = pathlib.Path(__file__).resolve().parents[1]


# Compilation is most of the suite's time (a tiny run compiles ~10 programs, 1-3 s each on
# CPU) and many tests build the same programs: XLA's persistent cache lets every later test,
# and the other pytest-xdist worker, load them instead. A cached executable is the one that
# compiling would produce (the key is the program and the compiler flags), so no result
# changes. DFL_TEST_COMPILATION_CACHE=0 turns it off; =PATH puts it elsewhere.
_CACHE_SETTING = os.environ.get("DFL_TEST_COMPILATION_CACHE", "")
if _CACHE_SETTING != "0":
  jax.config.update("jax_compilation_cache_dir", _CACHE_SETTING or os.path.join(
      tempfile.gettempdir(), f"dfl-test-compilation-cache-{getpass.getuser()}"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # cache every size


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


def with_fields(c, fields: dict):
  """`c` with fields given as section__field=value set (in place)."""
  for dotted, value in fields.items():
    node = c
    *path, leaf = dotted.split("__")
    for p in path:
      node = node[p]
    node[leaf] = value
  return c


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
  with_fields(c, overrides)
  if c.algorithm.name in ONE_GRADIENT_PER_ROUND and "algorithm__local_steps" not in overrides:
    c.algorithm.local_steps = None  # exact diffusion and QGM take one gradient per round
  return c


def run_seeds(config, seeds, workdirs, **options):
  """Seeds of `config` as one batch (dfl.train.train_and_evaluate_batch); their summaries,
  raising the first run's exception if one failed."""
  from dfl.train import train_and_evaluate_batch
  configs = []
  for seed in seeds:
    c = copy.deepcopy(config)
    c.seed = seed
    configs.append(c)
  outcomes = train_and_evaluate_batch(configs, [str(w) for w in workdirs], **options)
  for outcome in outcomes:
    if isinstance(outcome, BaseException):
      raise outcome
  return outcomes


@pytest.fixture
def tiny():
  return tiny_config
