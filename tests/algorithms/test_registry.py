"""The algorithm registry (dfl/algorithms/registry.py): each declaration is what its builder
really reads (recorded on a real build, not taken from the declaration), each declared default
is what the builder applies to a None (compared by the traced round program), fields a run does
not read are refused on the command line (real entry points in subprocesses) with the sweep
rule for shared flags, and batchable_values / structural_key on hand-made configs."""
import functools
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl.algorithms import ALGORITHMS, BuildContext, build_algorithm, registry
from dfl.algorithms.base import RoundInputs
from dfl.config_checks import validate_config
from dfl.mixing import DenseMixing
from experiments.configs import default
from launch import sweep
from tests.algorithms._tiny import N, ring_W, tiny_problem
from tests.conftest import REPO, with_fields

NAMES = sorted(ALGORITHMS)
SIZES = (12, 7, 5, 12)
DEFAULT = "experiments/configs/default.py"
# The list: numbers that enter the computation, not shapes.
BATCHABLE = {"lr", "lr_decay", "momentum", "weight_decay", "rho", "self_weight", "clip_norm",
             "success_fraction"}


def section(name, **fields):
  a = default.get_config().algorithm
  a.name, a.batch_size = name, 4
  for field, value in fields.items():
    a[field] = value
  return a


@functools.lru_cache(maxsize=1)
def problem():
  return tiny_problem(sizes=SIZES)


def context():
  return BuildContext(problem()[0], N, np.array(SIZES))


def program(algorithm) -> str:
  _, params_N, data = problem()
  state = algorithm.init(params_N)
  key = jax.random.key(0)
  inputs = RoundInputs(jnp.int32(0), key, DenseMixing(jnp.asarray(ring_W(), jnp.float32)), data,
                       key)
  return str(jax.make_jaxpr(algorithm.round)(state, inputs).jaxpr)


class Recording:
  """A view of a config section that notes every field read from it."""

  def __init__(self, section):
    self.__dict__["_section"], self.__dict__["read"] = section, set()

  def __getattr__(self, field):
    self.read.add(field)
    return self._section[field]

  __getitem__ = __getattr__

  def get(self, field, default=None):
    self.read.add(field)
    return self._section.get(field, default)


@pytest.mark.parametrize("name", NAMES)
def test_used_fields_are_exactly_what_the_builder_reads(name):
  """Reads of the registered builder (without the checks, which may look at fields the
  algorithm refuses), over the branches of the local work: steps and epochs."""
  read = {"name"}  # build_algorithm dispatches on it
  for fields in ({}, {"local_epochs": 1}):
    a = Recording(section(name, **fields))
    registry.spec(name).build(a, context())
    read |= a.read
  assert read == registry.used_fields(name)


@pytest.mark.parametrize("name", NAMES)
def test_every_algorithm_builds_from_the_default_config(name):
  c = default.get_config()
  c.algorithm.name = name
  validate_config(c)
  build_algorithm(c.algorithm, context())


# Another valid value for each field the config file leaves None.
_OTHER = {"local_steps": lambda d: d + 1, "momentum": lambda d: 0.5, "gossip_steps": lambda d: 2
          if d != 2 else 3, "sample_size": lambda d: 2}
_NONE_FIELDS = [(n, f) for n in NAMES for f in sorted(registry.used_fields(n) - {"name"})
                if default.get_config().algorithm[f] is None
                and registry.spec(n).hyperparameter(f).default is not None]


_FIRST_OF_EACH_FIELD = {next(c for c in _NONE_FIELDS if c[1] == f) for _, f in _NONE_FIELDS}


def test_the_config_file_agrees_with_the_declared_defaults():
  file_values = default.get_config().algorithm
  for name in NAMES:
    for h in registry.spec(name).hyperparameters:
      if file_values[h.name] is not None:
        assert file_values[h.name] == h.default, (name, h.name)
  assert ("dpsgd", "local_steps") in _NONE_FIELDS and ("dfedavgm", "momentum") in _NONE_FIELDS


@pytest.mark.parametrize("name, field", _NONE_FIELDS)
def test_a_none_builds_the_declared_default(name, field):
  """None builds the program of the declared default (and another value another program, so
  that the comparison can fail)."""
  declared = registry.spec(name).hyperparameter(field).resolve(None, N)
  build = lambda value: program(registry.spec(name).build(section(name, **{field: value}),
                                                          context()))
  unset = build(None)
  assert unset == build(declared)
  if (name, field) in _FIRST_OF_EACH_FIELD:  # the comparison can fail: one case per field
    assert unset != build(_OTHER[field](declared))


def test_declared_defaults_of_note():
  """Hand-written: the algorithms' own defaults, as their papers and references set them."""
  d = lambda name, field: registry.spec(name).hyperparameter(field).resolve(None, 16)
  assert [d(n, "local_steps") for n in ("dfedavg", "dpsgd", "choco", "push_sum", "gossip",
                                        "gradient_tracking")] == [5, 1, 1, 1, 5, 1]
  assert d("dfedavgm", "momentum") == 0.9 and d("qgm", "momentum") == 0.9
  assert d("dfedsam", "momentum") == 0.0
  assert d("dfedsam_mgs", "gossip_steps") == 4 and d("dfedsam", "gossip_steps") == 1
  assert d("modest", "sample_size") == 10
  assert registry.spec("modest").hyperparameter("sample_size").resolve(None, 6) == 6


@pytest.mark.parametrize("name", NAMES)
def test_batchable_fields_are_used_numbers(name):
  batchable = registry.batchable_fields(name)
  assert batchable <= registry.used_fields(name) and batchable <= BATCHABLE
  assert batchable.isdisjoint({"local_steps", "local_epochs", "batch_size", "gossip_steps",
                               "client_fraction", "sample_size", "aggregators", "compressor"})


def test_batchable_fields_of_note():
  assert registry.batchable_fields("dfedsam") == {"lr", "lr_decay", "momentum", "weight_decay",
                                                  "rho", "clip_norm"}
  assert registry.batchable_fields("gossip") >= {"self_weight"}
  assert registry.batchable_fields("modest") >= {"success_fraction"}
  assert "momentum" not in registry.batchable_fields("dfedavg")  # pinned at 0
  assert registry.used_fields("gossip").isdisjoint({"local_epochs", "keep_optimizer_state"})
  assert registry.batchable_fields("my_pkg.algos:build") == frozenset()
  assert registry.used_fields("my_pkg.algos:build", section("x")) == set(section("x").keys())


# ------------------------------------------------------------------ unused fields refused

def run(*args):
  env = {**os.environ, "DFL_DEBUG": ""}
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        env=env, timeout=300)


def error_lines(result):
  return [l for l in result.stderr.splitlines() if l and not l.startswith("I1")]


def test_a_field_the_algorithm_does_not_read_is_refused_on_the_command_line(tmp_path):
  result = run("-m", "launch.main", f"--config={DEFAULT}", f"--workdir={tmp_path / 'w'}",
               "--config.algorithm.name=gossip", "--config.algorithm.local_epochs=2")
  assert result.returncode == 2, result.stderr
  assert error_lines(result) == [
      "error: algorithm.local_epochs=2 is not used by algorithm.name='gossip'; it uses: "
      "['aggregation_weights', 'batch_size', 'clip_norm', 'local_steps', 'lr', 'lr_decay', "
      "'momentum', 'self_weight', 'weight_decay']."]
  assert not (tmp_path / "w").exists()


def test_a_field_the_algorithm_reads_still_runs(tmp_path):
  result = run("-m", "launch.main", f"--config={DEFAULT}", f"--workdir={tmp_path / 'w'}",
               "--config.algorithm.name=gossip", "--config.algorithm.self_weight=0.3",
               "--config.num_nodes=4", "--config.model.hidden=(16,)",
               "--config.algorithm.local_steps=2", "--config.algorithm.batch_size=8",
               "--config.train.rounds=2", "--config.eval.every_rounds=2",
               "--config.eval.local_examples=100")
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "w" / "summary.json").exists()


def test_refusals_with_a_hint_and_the_variance_correction_section():
  c = default.get_config()
  c.algorithm.name, c.algorithm.local_epochs = "gradient_tracking", 1
  assert registry.unused_override_message(c, "algorithm.local_epochs") == (
      "algorithm.name='gradient_tracking' does not support algorithm.local_epochs=1; leave it 0 "
      "and use algorithm.local_steps.")
  c.algorithm.local_epochs = 0
  assert "is not used by algorithm.name='gradient_tracking'" in registry.unused_override_message(
      c, "algorithm.local_epochs")  # even at its default: the flag does nothing
  assert registry.unused_override_message(c, "algorithm.lr") is None
  assert registry.unused_override_message(c, "train.rounds") is None  # other sections: free
  c.variance_correction.beta = 0.3
  assert registry.unused_override_message(c, "variance_correction.beta") == (
      "variance_correction.beta=0.3 is not used with variance_correction.enabled=False; set "
      "--config.variance_correction.enabled=True, or leave it out.")
  c.algorithm.name, c.variance_correction.enabled = "dfedavg", True
  assert "only used by variance_correction.target='conservative'" in (
      registry.unused_override_message(c, "variance_correction.beta"))
  c.variance_correction.target = "conservative"
  assert registry.unused_override_message(c, "variance_correction.beta") is None
  with pytest.raises(ValueError, match="algorithm.rho=0.05 is not used"):
    registry.check_overrides(c, ["algorithm.lr", "algorithm.rho"])


def test_a_shared_flag_reaches_the_runs_that_read_it(tmp_path):
  """--config.algorithm.rho over algorithm.name=dfedavg,dfedsam: dfedsam gets it, dfedavg not."""
  result = run("-m", "launch.sweep", f"--config={DEFAULT}", f"--root={tmp_path / 'root'}",
               "--sweep=algorithm.name=dfedavg,dfedsam", "--config.algorithm.rho=0.1",
               "--emit=commands")
  assert result.returncode == 0, result.stderr
  dfedavg, dfedsam = result.stdout.splitlines()
  assert "--config.algorithm.name=dfedavg" in dfedavg and "rho" not in dfedavg
  assert "--config.algorithm.name=dfedsam" in dfedsam and "--config.algorithm.rho=0.1" in dfedsam


def test_sweep_rule_for_unused_fields(tmp_path):
  config, root = default.get_config(), str(tmp_path)
  config.algorithm.keep_optimizer_state = True  # as --config.algorithm.keep_optimizer_state=True
  runs = sweep.plan_runs(config, DEFAULT, root, ["--config.algorithm.keep_optimizer_state", "true"],
                         ["algorithm.name=dfedavg,dpsgd"], [], None)  # dpsgd would refuse it
  assert [("keep_optimizer_state" in " ".join(r.command)) for r in runs] == [True, False]
  with pytest.raises(ValueError, match=r"algorithm.self_weight=0.2 is not used by algorithm.name="
                     r"'dfedavg'.* \(swept, in 2 run\(s\)"):
    sweep.plan_runs(default.get_config(), DEFAULT, root, [],
                    ["algorithm.name=dfedavg,gossip", "algorithm.self_weight=0.2,0.3"], [], None)
  zipped = sweep.plan_runs(default.get_config(), DEFAULT, root, [], [],
                           ["algorithm.name=gossip,gossip", "algorithm.self_weight=0.2,0.3"], None)
  assert len(zipped) == 2
  config = default.get_config()
  config.algorithm.local_epochs = 2
  with pytest.raises(ValueError, match=r"set for every run, and none reads it"):
    sweep.plan_runs(config, DEFAULT, root, ["--config.algorithm.local_epochs=2"],
                    ["algorithm.name=gossip,gradient_tracking"], [], None)


# ------------------------------------------------------------------ batching

def config(**fields):
  return with_fields(default.get_config(), fields)


def test_batchable_values_resolve_the_defaults():
  assert registry.batchable_values(config(algorithm__name="dfedsam")) == {
      "algorithm.lr": 0.1, "algorithm.lr_decay": 1.0, "algorithm.weight_decay": 0.0,
      "algorithm.clip_norm": math.inf, "algorithm.momentum": 0.0, "algorithm.rho": 0.05}
  values = registry.batchable_values(config(algorithm__name="dfedavgm", algorithm__clip_norm=2.0))
  assert values["algorithm.momentum"] == 0.9 and values["algorithm.clip_norm"] == 2.0
  assert registry.batchable_values(config(algorithm__name="modest"))[
      "algorithm.success_fraction"] == 1.0
  on = config(variance_correction__enabled=True, variance_correction__strength=0.5)
  assert registry.batchable_values(on)["variance_correction.strength"] == 0.5
  assert "variance_correction.beta" not in registry.batchable_values(on)  # follow_others
  on.variance_correction.target = "conservative"
  assert registry.batchable_values(on)["variance_correction.beta"] == 0.5
  assert not any(k.startswith("variance_correction") for k in registry.batchable_values(config()))
  assert not any(k.startswith("algorithm") for k in registry.batchable_values(
      config(algorithm__name="my_pkg.algos:build")))


SAME_PROGRAM = [  # each differs from the default config only in batchable or per-run fields
    dict(algorithm__lr=0.3, algorithm__weight_decay=1e-4, algorithm__clip_norm=5.0),
    dict(seed=5, data__seed=3, topology__seed=4, data__alpha=0.1, data__partition="iid"),
    dict(topology__name="torus", topology__degree=6, topology__weights="uniform"),
    dict(checkpoint__every_rounds=7, logging__tensorboard=True),
    dict(algorithm__self_weight=0.9, algorithm__rho=0.2),  # not read by dfedavg
    dict(algorithm__local_steps=5),  # dfedavg's None
    dict(variance_correction__strength=0.3),  # disabled: not read
]
OTHER_PROGRAM = [
    dict(algorithm__local_steps=3), dict(algorithm__batch_size=16),
    dict(algorithm__name="dfedsam"), dict(num_nodes=8), dict(train__rounds=50),
    dict(model__hidden=(16,)), dict(variance_correction__enabled=True),
    dict(algorithm__keep_optimizer_state=True), dict(topology__mixing_form="sparse"),
]


def test_structural_key_groups_exactly_the_batchable_differences():
  base = registry.structural_key(config())
  for fields in SAME_PROGRAM:
    assert registry.structural_key(config(**fields)) == base, fields
    assert registry.batchable_values(config(**fields)).keys() == registry.batchable_values(
        config()).keys()
  for fields in OTHER_PROGRAM:
    assert registry.structural_key(config(**fields)) != base, fields
  # Resolved per algorithm: dfedsam_mgs's Q None is 4, momentum is batchable for dfedavgm.
  mgs = dict(algorithm__name="dfedsam_mgs")
  assert registry.structural_key(config(**mgs)) == registry.structural_key(
      config(**mgs, algorithm__gossip_steps=4))
  assert registry.structural_key(config(**mgs)) != registry.structural_key(
      config(**mgs, algorithm__gossip_steps=2))
  m = dict(algorithm__name="dfedavgm")
  assert registry.structural_key(config(**m)) == registry.structural_key(
      config(**m, algorithm__momentum=0.5))
  vc = dict(variance_correction__enabled=True)
  assert registry.structural_key(config(**vc)) == registry.structural_key(
      config(**vc, variance_correction__strength=0.5, variance_correction__beta=0.1))
  assert registry.structural_key(config(**vc)) != registry.structural_key(
      config(**vc, variance_correction__target="conservative"))
  user = dict(algorithm__name="my_pkg.algos:build")  # every field of it is structural
  assert registry.structural_key(config(**user)) != registry.structural_key(
      config(**user, algorithm__lr=0.3))
