"""Validation of a run's config before anything expensive happens: each error names the bad
field, its value and what would be valid.

The checks of the `algorithm` section live with the algorithms (dfl/algorithms/common.py for
the shared fields, each algorithm's module for its own; dfl/algorithms/registry.py runs them),
those of `variance_correction` in dfl/variance_correction.py; this file keeps the other
sections and the checks that span sections (an algorithm with a topology, a schedule, variance
correction, an aggregation rule or an attack)."""
from __future__ import annotations

import math

import topologies
from dfl import execution, variance_correction
from dfl.adversary import nodes as adversary_nodes
from dfl.aggregation import rules as aggregation_rules
from dfl.algorithms import (ALGORITHMS, COLUMN_STOCHASTIC, NO_VARIANCE_CORRECTION,
                            STATIC_TOPOLOGY_ONLY, SUPPORTS_MODEL_STATE, USES_MIXER,
                            USES_TOPOLOGY)
from dfl.algorithms import registry as algorithm_registry
from dfl.data import DATASETS, IMAGE_DATASETS, SYNTHETIC_DATASETS
from dfl.data.augment import AUGMENTATIONS
from dfl.errors import UserError
from dfl.imports import is_import_path
from dfl.data.partition import PARTITIONS
from dfl.system import availability as system_availability
from dfl.system import deadline as system_deadline
from dfl.system import model as system_model
from dfl.evaluation import LOCAL_SUBSETS
from dfl.layers import CONV_IMPLS
from dfl.models import MODELS, NORM_MODELS, REGRESSION_MODELS
from dfl.models_cifar import NORMS


def _require(ok: bool, message: str):
  if not ok:
    raise UserError(message)


def _finite_numbers(config, prefix: str = "") -> None:
  """No config number is inf or nan (`lr=inf` would pass `lr > 0`)."""
  for key, value in config.items():
    if hasattr(value, "items"):
      _finite_numbers(value, f"{prefix}{key}.")
    elif isinstance(value, float):
      _require(math.isfinite(value), f"{prefix}{key} must be a finite number, got {value}.")


def _one_of(field: str, value, valid):
  _require(value in valid, f"Unknown {field}={value!r}; valid: {sorted(valid)}.")


def _registered_or_path(field: str, value, registry) -> None:
  _require(value in registry or is_import_path(value),
           f"Unknown {field}={value!r}; valid: {sorted(registry)} or an import path "
           "'package.module:attribute'.")


def _uses_topology(algorithm_name: str) -> bool:
  """Built-in gossip algorithms, and a user's (by import path), which may read W."""
  return algorithm_name in USES_TOPOLOGY or is_import_path(algorithm_name)


def validate_config(config) -> None:
  _finite_numbers(config)
  _require(isinstance(config.num_nodes, int) and config.num_nodes >= 2,
           f"num_nodes must be an integer >= 2, got {config.num_nodes!r}.")
  _registered_or_path("data.name", config.data.name, DATASETS)
  _one_of("data.partition", config.data.partition, PARTITIONS)
  if config.data.partition in ("dirichlet", "dirichlet_client"):
    _require(config.data.alpha > 0, f"data.alpha must be > 0, got {config.data.alpha}.")
  min_samples = config.data.get("min_samples", 0)
  _require(isinstance(min_samples, int) and min_samples >= 0,
           f"data.min_samples must be an integer >= 0, got {min_samples!r}.")
  if (config.data.partition == "pathological" and config.data.name in DATASETS
      and config.data.name not in SYNTHETIC_DATASETS):
    k, num_classes = config.data.classes_per_node, DATASETS[config.data.name][1]
    _require(isinstance(k, int) and 1 <= k <= num_classes,
             f"data.classes_per_node must be an integer in [1, {num_classes}] for "
             f"data.name={config.data.name!r}, got {k!r}.")
  _one_of("data.augment", config.data.augment, AUGMENTATIONS)
  if config.data.augment != "none" and not is_import_path(config.data.name):  # else: at build
    _require(config.data.name in IMAGE_DATASETS,
             f"data.augment={config.data.augment!r} needs an image dataset with H x W x C "
             f"samples, got data.name={config.data.name!r}; valid: {sorted(IMAGE_DATASETS)}.")
  _require(isinstance(config.eval.personal_test, bool),
           f"eval.personal_test must be True or False, got {config.eval.personal_test!r}.")
  _registered_or_path("model.name", config.model.name, MODELS)
  _validate_problem(config)
  _one_of("model.conv", config.model.conv, CONV_IMPLS)
  _validate_model_state(config)
  _one_of("topology.name", config.topology.name, topologies.NAMES)
  _one_of("topology.mixing_form", config.topology.mixing_form, ("auto", "dense", "sparse"))
  _one_of("topology.weights", config.topology.weights, topologies.WEIGHTS)
  _one_of("topology.schedule", config.topology.schedule, topologies.SCHEDULES)
  a = config.algorithm
  _registered_or_path("algorithm.name", a.name, ALGORITHMS)
  _validate_schedule(config.topology, a.name, config.get("variance_correction"))
  algorithm_registry.check_section(a, config.num_nodes)  # dfl/algorithms/<name>.py
  _require(config.topology.weights not in topologies.COLUMN_STOCHASTIC_WEIGHTS
           or a.name in COLUMN_STOCHASTIC,
           f"topology.weights={config.topology.weights!r} gives column-stochastic weights, which "
           f"only {sorted(COLUMN_STOCHASTIC)} mixes with; algorithm.name={a.name!r} needs rows "
           "summing to 1: use metropolis_hastings, uniform or max_degree.")
  try:
    execution.validate_strategy(config.train.execution)
  except ValueError as e:
    raise ValueError(f"train.execution: {e}") from None
  _require(config.train.rounds >= 1, f"train.rounds must be >= 1, got {config.train.rounds}.")
  _require(config.eval.local_subset in LOCAL_SUBSETS,
           f"Unknown eval.local_subset={config.eval.local_subset!r}; valid: {list(LOCAL_SUBSETS)}.")
  _require(isinstance(config.eval.local_examples, int) and config.eval.local_examples >= 0,
           f"eval.local_examples must be an integer >= 0 (0: the whole test set), got "
           f"{config.eval.local_examples!r}.")
  _require(config.eval.every_rounds >= 1,
           f"eval.every_rounds must be >= 1, got {config.eval.every_rounds}.")
  _validate_system(config)
  _validate_variance_correction(config.get("variance_correction"), a.name)
  _validate_adversary(config)
  _require(isinstance(config.mesh.devices, int) and config.mesh.devices >= 0,
           f"mesh.devices must be an integer >= 0 (0 = all local devices), got "
           f"{config.mesh.devices!r}.")
  ck = config.checkpoint
  _require(isinstance(ck.every_rounds, int) and ck.every_rounds >= 0,
           f"checkpoint.every_rounds must be an integer >= 0 (0: only at the end and on "
           f"SIGTERM/SIGINT), got {ck.every_rounds!r}.")
  _require(isinstance(ck.max_to_keep, int) and ck.max_to_keep >= 1,
           f"checkpoint.max_to_keep must be an integer >= 1, got {ck.max_to_keep!r}.")


def _validate_system(config) -> None:
  """The `system` section (dfl/system/model.py) and async_gossip's interval jitter."""
  a, system = config.algorithm, config.get("system")
  jitter = a.get("interval_jitter", 0.0)
  _require(a.name == "async_gossip" or jitter == 0.0,
           f"algorithm.interval_jitter={jitter} is only used by algorithm.name='async_gossip', "
           f"not {a.name!r}; leave it 0.")
  system_model.check_section(system, config.num_nodes)
  if system is None or not system.enabled:
    return
  if system.deadline_seconds > 0:
    _require(a.name in system_deadline.SUPPORTS_DEADLINE,
             f"system.deadline_seconds={system.deadline_seconds} acts inside the rounds of "
             f"{sorted(system_deadline.SUPPORTS_DEADLINE)}, not algorithm.name={a.name!r}; "
             "leave it 0.")
  availability = system.get("availability", "none")
  if system_availability.parse_availability(availability).kind != "none":
    _require(a.name in system_deadline.SUPPORTS_DEADLINE,
             f"system.availability={availability!r} acts inside the rounds of "
             f"{sorted(system_deadline.SUPPORTS_DEADLINE)} (through the round deadline hook), "
             f"not algorithm.name={a.name!r}; leave it 'none'.")
  _require(a.name != "async_gossip" or system.compute_jitter == 0.0,
           f"system.compute_jitter={system.compute_jitter} varies synchronous rounds; "
           "algorithm.name='async_gossip' draws its own intervals: use algorithm.interval_jitter "
           "and leave system.compute_jitter 0.")
  _require(system.late_updates == "drop" or system.deadline_seconds > 0,
           f"system.late_updates={system.late_updates!r} only acts with a round deadline; set "
           "system.deadline_seconds > 0 or leave it 'drop'.")
  _require(a.name == "async_gossip" or system.tick_seconds == 0.0,
           f"system.tick_seconds={system.tick_seconds} is only used by algorithm.name="
           f"'async_gossip', not {a.name!r}; leave it 0.")


def _validate_problem(config) -> None:
  """The synthetic least-squares problem and the loss's L2 term."""
  data, model = config.data, config.model
  least_squares = data.name == "least_squares"
  _require(least_squares == (model.name in REGRESSION_MODELS),
           f"data.name={data.name!r} with model.name={model.name!r}: least_squares is a "
           f"regression and needs model.name='linear', and model.name='linear' needs "
           f"data.name='least_squares'.")
  h = data.get("heterogeneity", 0.0)
  _require(isinstance(h, (int, float)) and h >= 0,
           f"data.heterogeneity must be a number >= 0 (0: every node has the same minimizer), "
           f"got {h!r}.")
  _require(least_squares or h == 0,
           f"data.heterogeneity={h} is only used by data.name='least_squares', not "
           f"{data.name!r}; leave it 0 (data.partition sets the skew of real data).")
  if least_squares:
    _require(isinstance(data.dim, int) and data.dim >= 1,
             f"data.dim must be an integer >= 1, got {data.dim!r}.")
    _require(isinstance(data.samples_per_node, int) and data.samples_per_node >= data.dim,
             f"data.samples_per_node must be an integer >= data.dim={data.dim} (each node's "
             f"loss is strongly convex only with at least d rows), got {data.samples_per_node!r}.")
    _require(not config.eval.personal_test,
             "eval.personal_test=True draws per-node test splits by class, which "
             "data.name='least_squares' does not have; leave it False.")
  l2 = model.get("l2", 0.0)
  _require(isinstance(l2, (int, float)) and l2 >= 0, f"model.l2 must be >= 0, got {l2!r}.")


def _validate_model_state(config) -> None:
  """model.norm, model.average_stats, eval.recompute_stats_batches (dfl/model_state.py); whether
  a model named by import path has state is known only once it is built (dfl/experiment.py)."""
  norm = config.model.get("norm", "group")
  _one_of("model.norm", norm, NORMS)
  name = config.model.name
  _require(norm == "group" or name in NORM_MODELS,
           f"model.norm={norm!r} is for model.name in {sorted(NORM_MODELS)}; model.name={name!r} "
           "has no normalisation layer to swap (a model named by import path sets its own, "
           "e.g. in model.kwargs): leave model.norm='group'.")
  average_stats = config.model.get("average_stats", True)
  _require(isinstance(average_stats, bool),
           f"model.average_stats must be True or False, got {average_stats!r}.")
  batches = config.eval.get("recompute_stats_batches", 0)
  _require(isinstance(batches, int) and not isinstance(batches, bool) and batches >= 0,
           f"eval.recompute_stats_batches must be an integer >= 0 (0: off), got {batches!r}.")
  if norm == "batch":
    algorithm = config.algorithm.name
    _require(algorithm in SUPPORTS_MODEL_STATE,
             f"model.norm='batch' gives model.name={name!r} BatchNorm statistics, which "
             f"algorithm.name={algorithm!r} does not carry; use one of "
             f"{sorted(SUPPORTS_MODEL_STATE)}, or model.norm='group'.")


def _validate_schedule(topology, algorithm_name: str, vc) -> None:
  """A schedule changes the topology in some rounds: only algorithms that mix over the topology
  have a use for it, and its merge rounds must stay exact averages."""
  schedule, start = topology.schedule, topology.get("schedule_start")
  if schedule != "none":
    _require(_uses_topology(algorithm_name),
             f"topology.schedule={schedule!r} changes the communication graph, which "
             f"algorithm.name={algorithm_name!r} does not use (it samples clients, not "
             f"neighbours); valid with {sorted(USES_TOPOLOGY)}, else leave topology.schedule="
             "'none'.")
    _require(algorithm_name not in STATIC_TOPOLOGY_ONLY,
             f"topology.schedule={schedule!r} changes the communication graph, but "
             f"algorithm.name={algorithm_name!r} keeps copies of its neighbours' models and needs "
             "a fixed graph; leave topology.schedule='none'.")
    _require(vc is None or not vc.enabled,
             f"topology.schedule={schedule!r} with variance_correction.enabled=True: the "
             "correction rescales every model after each gossip step, so the schedule's merge "
             "rounds would no longer be exact averages; disable one of them.")
  _require(start is None or schedule == "dense_window",
           f"topology.schedule_start={start} places a dense window, but topology.schedule="
           f"{schedule!r}; set topology.schedule='dense_window' or leave schedule_start unset.")


def _validate_adversary(config) -> None:
  """The `aggregation` and `adversary` sections (dfl/aggregation, dfl/adversary)."""
  aggregation, adversary = config.get("aggregation"), config.get("adversary")
  try:
    aggregation_rules.check_section(aggregation)
    adversary_nodes.check_section(adversary, config.num_nodes)
  except ValueError as e:
    raise UserError(str(e)) from None
  name, vc = config.algorithm.name, config.get("variance_correction")
  vc_on = vc is not None and vc.enabled
  rule = None if aggregation is None else aggregation.rule
  attack = None if adversary is None else adversary.attack
  for field, value, default in (("aggregation.rule", rule, "mean"),
                                ("adversary.attack", attack, "none")):
    if value in (None, default):
      continue
    _require(name in USES_MIXER or is_import_path(name),
             f"{field}={value!r} acts in the plain gossip step, which algorithm.name={name!r} "
             f"does not have (or replaces with its own exchange); valid with "
             f"{sorted(USES_MIXER)}.")
    _require(field != "adversary.attack" or config.model.name not in REGRESSION_MODELS,
             f"adversary.attack={value!r} reports honest accuracies, which the regression "
             f"model.name={config.model.name!r} does not have; leave adversary.attack='none'.")
    _require(not vc_on,
             f"{field}={value!r} with variance_correction.enabled=True: both replace the gossip "
             f"step and do not compose; disable one of them.")


def _validate_variance_correction(vc, algorithm_name: str) -> None:
  if vc is None or not vc.enabled:
    return
  _require(algorithm_name not in NO_VARIANCE_CORRECTION,
           f"variance_correction.enabled=True rescales the models after gossip, which breaks the "
           f"exact corrections of algorithm.name={algorithm_name!r}; disable it.")
  _require(algorithm_name in USES_MIXER or is_import_path(algorithm_name),
           f"variance_correction.enabled=True needs a gossip algorithm that mixes models, but "
           f"algorithm.name={algorithm_name!r}; valid: {sorted(USES_MIXER)} or one named by "
           "import path.")
  variance_correction.check_section(vc)
