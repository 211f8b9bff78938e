"""Algorithm registry: each algorithm declares, in its own module, its builder and every field of
the `algorithm` config section that the builder reads (names, defaults, checks, which are
batchable), with the `register` decorator:

    @registry.register("dfedsam", hyperparameters=(*common.LOCAL_UPDATE, common.RHO, ...),
                       uses_topology=True, uses_mixer=True)
    def build(a, ctx: BuildContext) -> Algorithm: ...

A builder reads its fields itself (`a.lr`, or `resolved(a, "local_steps")` for a field whose
None means the algorithm's declared default), so that tests/algorithms/test_registry.py can
compare the declaration with the reads of a real build. Fields many algorithms share are
declared once in dfl/algorithms/common.py; their value checks run on every config whatever the
algorithm (a field's valid range does not depend on it), the checks of an algorithm's own
fields (and its `check` function, for checks across its fields and refusals with a hint) only
when it is chosen.

Used fields. `used_fields(name)` is what the builder reads, `name` included. A field of the
`algorithm` section that is set explicitly on the command line but not used by the chosen
algorithm is an error (`check_overrides`, called by launch/cli.py), e.g. `gossip` with
`local_epochs`; config files may set fields for several algorithms. The `variance_correction`
section works the same way (dfl/variance_correction.py: only `enabled` when disabled, `beta`
only with target='conservative'). A user's algorithm named by import path uses every field of
the section and none is batchable: its builder's reads are not declared.

Batching. `batchable_values(config)` gives the batchable fields of a config, resolved, and
`structural_key(config)` is equal for two configs exactly when they can run as one program with
per-run values: they differ only in batchable fields and in the fields that become per-run data
(seeds, partition, graph; `PER_RUN_FIELDS`); `checkpoint` and `logging` are ignored.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Iterable, NamedTuple, Optional

import numpy as np

from dfl import variance_correction
from dfl.algorithms.base import Algorithm
from dfl.errors import UserError
from dfl.hyperparameters import Hyperparameter, require
from dfl.imports import is_import_path, resolve
from dfl.tracing import has_traced

__all__ = ["Hyperparameter", "AlgorithmSpec", "BuildContext", "register", "declare_shared",
           "spec", "names", "used_fields", "batchable_fields", "users", "resolved",
           "check_section", "build_algorithm", "used_config_fields", "check_overrides",
           "unused_override_message", "batchable_values", "structural_key", "PER_RUN_FIELDS",
           "require"]


class BuildContext(NamedTuple):
  loss_fn: Callable  # loss(params, x, y, mask) for one node's minibatch (mean over valid lanes)
  num_nodes: int
  shard_sizes: np.ndarray  # [N] samples per node
  mixer: Optional[Callable] = None  # None: plain gossip; else e.g. variance-corrected mixing
  seed: int = 0  # for choices made when building (which nodes leave or fail in MoDeST)
  merge_rounds: tuple = ()  # a schedule's dense rounds: mixed with the topology's W as given
  augment: Optional[Callable] = None  # augment(key, x_B) -> x_B on every local minibatch
  # A model with state or dropout (dfl/model_state.py): its description, initial states and
  # average_stats; loss_fn is then a StatefulLoss. None: a plain model.
  model_state: Optional[Any] = None
  # The system model's per-node seconds of one local phase plus sending to the neighbours
  # (dfl/system), and the tick of async_gossip (0: the fastest node's); None without one.
  node_seconds: Optional[np.ndarray] = None
  tick_seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
  """A registered algorithm.

  Attributes:
    name: its `algorithm.name`.
    build: build(algorithm_section, BuildContext) -> Algorithm.
    hyperparameters: every field of the section the builder reads (except `name`), with this
      algorithm's defaults.
    check: check(algorithm_section, num_nodes) raising UserError: checks across its fields, and
      refusals of fields it does not use that deserve a hint (run before the builder, and by
      dfl/config_checks.py).
    uses_topology: communicates over the topology's graph (the others ignore W).
    uses_mixer: its exchange is a plain gossip step that `BuildContext.mixer` (variance
      correction, robust aggregation, attacks) may replace.
    static_topology_only: holds copies of its neighbours' state: no time-varying graph.
    column_stochastic: needs a column-stochastic W (and may use column_uniform weights).
    one_gradient_per_round: takes exactly one gradient per round.
    no_variance_correction: variance-corrected mixing would break its corrections.
    supports_model_state: carries a model's state (BatchNorm statistics) and dropout keys
      (dfl/model_state.py); the others refuse such a model.
  """
  name: str
  build: Callable[..., Algorithm]
  hyperparameters: tuple[Hyperparameter, ...]
  check: Optional[Callable[[Any, int], None]] = None
  uses_topology: bool = False
  uses_mixer: bool = False
  static_topology_only: bool = False
  column_stochastic: bool = False
  one_gradient_per_round: bool = False
  no_variance_correction: bool = False
  supports_model_state: bool = False

  def hyperparameter(self, field: str) -> Hyperparameter:
    for h in self.hyperparameters:
      if h.name == field:
        return h
    raise KeyError(f"algorithm.name={self.name!r} does not declare algorithm.{field}.")

  @property
  def used_fields(self) -> frozenset[str]:
    return frozenset({"name", *(h.name for h in self.hyperparameters)})

  @property
  def batchable_fields(self) -> frozenset[str]:
    return frozenset(h.name for h in self.hyperparameters if h.batchable)


_SPECS: dict[str, AlgorithmSpec] = {}
_SHARED: dict[str, Hyperparameter] = {}  # checked on every config, in this order


def declare_shared(*hyperparameters: Hyperparameter) -> None:
  """Fields several algorithms read (dfl/algorithms/common.py): their checks run on every
  config, in the order declared."""
  for h in hyperparameters:
    _SHARED[h.name] = h


def register(name: str, *, hyperparameters: Iterable[Hyperparameter],
             check: Optional[Callable[[Any, int], None]] = None, **properties) -> Callable:
  """Decorator registering `build` as the builder of algorithm.name=`name`; returns it as is.

  Args:
    name: the algorithm's name in configs.
    hyperparameters: every field the builder reads besides `name` (see AlgorithmSpec).
    check: the algorithm's own check(section, num_nodes), if any.
    **properties: the AlgorithmSpec flags (uses_topology=True, ...).
  """
  hyperparameters = tuple(hyperparameters)
  fields = [h.name for h in hyperparameters]
  if len(set(fields)) != len(fields):
    raise ValueError(f"algorithm {name!r} declares a field twice: {fields}.")

  def decorate(build: Callable[..., Algorithm]) -> Callable[..., Algorithm]:
    if name in _SPECS:
      raise ValueError(f"algorithm.name={name!r} is registered twice.")
    _SPECS[name] = AlgorithmSpec(name, build, hyperparameters, check, **properties)
    return build
  return decorate


def names() -> list[str]:
  return sorted(_SPECS)


def spec(name: str) -> AlgorithmSpec:
  if name not in _SPECS:
    raise ValueError(f"Unknown algorithm.name={name!r}; valid: {names()} or an import "
                     "path 'package.module:builder'.")
  return _SPECS[name]


def used_fields(name: str, section=None) -> frozenset[str]:
  """Every field of the `algorithm` section the builder of `name` reads, `name` included. A
  user's algorithm (import path) uses them all: the fields of `section` if given, else every
  field any registered algorithm declares."""
  if is_import_path(name):
    if section is not None:
      return frozenset(section.keys()) | {"name"}
    return frozenset({"name", *_SHARED, *(f for s in _SPECS.values() for f in s.used_fields)})
  return spec(name).used_fields


def batchable_fields(name: str) -> frozenset[str]:
  """The used fields of `name` that are batchable; none for a user's algorithm."""
  if is_import_path(name):
    return frozenset()
  return spec(name).batchable_fields


def users(field: str) -> list[str]:
  """The registered algorithms that read `field`, sorted."""
  return sorted(n for n, s in _SPECS.items() if field in s.used_fields)


def resolved(a, field: str, num_nodes: Optional[int] = None) -> Any:
  """algorithm.`field` of section `a`, its None (or absence) replaced by the default that
  a.name declares for it."""
  return spec(a.name).hyperparameter(field).resolve(a.get(field), num_nodes)


def _catalogue() -> dict[str, Hyperparameter]:
  """Every declared field, with its first declaration that has an `if_unused` refusal."""
  out = dict(_SHARED)
  for s in _SPECS.values():
    for h in s.hyperparameters:
      if h.name not in out or (out[h.name].if_unused is None and h.if_unused is not None):
        out[h.name] = h
  return out


def check_algorithm(a, num_nodes: int) -> None:
  """The chosen algorithm's own checks: its spec's `check`, then those of its hyperparameters
  that are not the shared declaration's."""
  s = spec(a.name)
  if s.check is not None:
    s.check(a, num_nodes)
  for h in s.hyperparameters:
    shared = _SHARED.get(h.name)
    if h.check is not None and (shared is None or h.check is not shared.check):
      h.check(a)


def check_section(a, num_nodes: int) -> None:
  """Every check of the `algorithm` section (algorithm.name itself is checked by the caller):
  the shared fields' checks, the chosen algorithm's own, then the refusal of values that an
  algorithm not reading the field would silently ignore (e.g. choco's compressor elsewhere)."""
  for h in _SHARED.values():
    if h.check is not None:
      h.check(a)
  if is_import_path(a.name):
    return
  check_algorithm(a, num_nodes)
  used = used_fields(a.name)
  for field, h in _catalogue().items():
    if field not in used and h.if_unused is not None:
      message = h.if_unused(a, a.name, users(field))
      require(message is None, message)


def check_model_state(algorithm_name: str, model_state) -> None:
  """A model with state or dropout needs an algorithm that carries it."""
  if model_state is None or (not is_import_path(algorithm_name) and
                             spec(algorithm_name).supports_model_state):
    return
  carriers = sorted(n for n, s in _SPECS.items() if s.supports_model_state)
  raise UserError(f"model.name={model_state.name!r} has {model_state.kind()}, which "
                  f"algorithm.name={algorithm_name!r} does not carry; use one of "
                  f"{carriers}, or a model without state.")


def build_algorithm(algorithm_config, ctx: BuildContext) -> Algorithm:
  """The registered builder of algorithm.name (after the algorithm's own checks), or a user's
  builder named by import path ("package.module:builder", called as builder(algorithm_config,
  ctx) like the ones here)."""
  name = algorithm_config.name
  check_model_state(name, ctx.model_state)
  if is_import_path(name):
    algorithm = resolve(name, "algorithm.name")(algorithm_config, ctx)
    if not (callable(getattr(algorithm, "init", None)) and
            callable(getattr(algorithm, "round", None))):
      raise UserError(f"algorithm.name={name!r} returned a {type(algorithm).__name__}; a builder "
                      "returns dfl.algorithms.Algorithm(init, round).")
    return algorithm
  s = spec(name)
  if not has_traced(algorithm_config):  # (traced: a batch's rebuild, checked per run before)
    check_algorithm(algorithm_config, ctx.num_nodes)
  return s.build(algorithm_config, ctx)


# ------------------------------------------------------------------ whole configs

def used_config_fields(config) -> frozenset[str]:
  """The section-qualified fields of the `algorithm` and `variance_correction` sections that
  this config's run reads ("algorithm.lr", "variance_correction.strength", ...)."""
  a = config.algorithm
  out = {f"algorithm.{f}" for f in used_fields(a.name, a)}
  vc = config.get("variance_correction")
  if vc is not None:
    out |= {f"variance_correction.{f}" for f in variance_correction.used_fields(vc)}
  return frozenset(out)


CHECKED_SECTIONS = ("algorithm", "variance_correction")


def _value(config, field: str) -> Any:
  node = config
  for part in field.split("."):
    node = node[part]
  return node


def unused_override_message(config, field: str) -> Optional[str]:
  """Why the explicitly set `field` ("algorithm.local_epochs") is refused for `config`, or None
  if its run reads it (fields outside CHECKED_SECTIONS are never refused here)."""
  section = field.split(".", 1)[0]
  if section not in CHECKED_SECTIONS or config.get(section) is None:
    return None
  name = config.algorithm.name
  if not (is_import_path(name) or name in _SPECS):
    return None  # an unknown algorithm.name: dfl/config_checks.py says so
  if field in used_config_fields(config):
    return None
  value = _value(config, field)
  if section == "algorithm":
    a = config.algorithm
    try:  # the algorithm's own refusal says what to use instead (dfedavg momentum: dfedavgm)
      check_algorithm(a, config.num_nodes)
    except ValueError as e:
      return str(e)
    used = sorted(used_fields(a.name) - {"name"})
    return f"{field}={value!r} is not used by algorithm.name={a.name!r}; it uses: {used}."
  return variance_correction.unused_message(config.variance_correction, field, value)


def check_overrides(config, fields: Iterable[str]) -> None:
  """Raises UserError for the first of the explicitly set `fields` that `config` does not use."""
  for field in fields:
    message = unused_override_message(config, field)
    require(message is None, message)


def batchable_values(config) -> dict[str, float]:
  """{"algorithm.lr": 0.1, ..., "variance_correction.strength": 1.0}: the batchable fields this
  config's run reads, with their values resolved (None -> the algorithm's default; clip_norm
  None, no clipping, -> inf: clipping to an infinite norm leaves every finite gradient as it
  is). Configs with one `structural_key` have the same keys here."""
  a = config.algorithm
  out = {}
  if not is_import_path(a.name):
    s = spec(a.name)
    for h in s.hyperparameters:
      if h.batchable:
        value = h.resolve(a.get(h.name), config.num_nodes)
        out[f"algorithm.{h.name}"] = math.inf if value is None else float(value)
  vc = config.get("variance_correction")
  if vc is not None:
    used = variance_correction.used_fields(vc)
    for h in variance_correction.HYPERPARAMETERS:
      if h.batchable and h.name in used:
        out[f"variance_correction.{h.name}"] = float(h.resolve(vc.get(h.name)))
  return out


# Fields that become per-run data in a batch of runs (the shards, W, the keys), never shapes.
PER_RUN_FIELDS = frozenset({
    "seed", "data.seed", "data.alpha", "data.partition", "data.classes_per_node",
    "topology.name", "topology.seed", "topology.weights", "topology.laziness",
    "topology.degree", "topology.edge_prob", "topology.rewire_prob", "topology.directed",
    "topology.expected_degree", "topology.edges_file"})
IGNORED_SECTIONS = ("checkpoint", "logging")


def _flat(node, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key in node.keys():
    value = node[key]
    if hasattr(value, "keys"):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def structural_key(config) -> str:
  """A text equal for two configs exactly when they differ only in batchable fields, in
  PER_RUN_FIELDS, in fields their algorithm does not read, or in checkpoint / logging settings:
  the runs one compiled program can hold, with per-run values. Fields the algorithm reads are
  compared resolved (local_steps None and 5 for dfedavg are one program)."""
  a = config.algorithm
  flat = {f: v for f, v in _flat(config).items()
          if f not in PER_RUN_FIELDS and f.split(".", 1)[0] not in IGNORED_SECTIONS
          and f.split(".", 1)[0] not in CHECKED_SECTIONS}
  used = used_config_fields(config)
  batchable = set(batchable_values(config))
  if is_import_path(a.name):
    flat.update({f"algorithm.{k}": v for k, v in _flat(a).items()})
  else:
    s = spec(a.name)
    flat["algorithm.name"] = a.name
    for h in s.hyperparameters:
      if not h.batchable:
        flat[f"algorithm.{h.name}"] = h.resolve(a.get(h.name), config.num_nodes)
  vc = config.get("variance_correction")
  if vc is not None:
    for h in variance_correction.HYPERPARAMETERS:
      field = f"variance_correction.{h.name}"
      if field in used and field not in batchable:
        flat[field] = h.resolve(vc.get(h.name))
  return json.dumps({k: flat[k] for k in sorted(flat)}, default=repr, separators=(",", ":"))
