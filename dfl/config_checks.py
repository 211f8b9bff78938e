"""Validation of a run's config before anything expensive happens: each error names the bad
field, its value and what would be valid."""
from __future__ import annotations

import math

import topologies
from dfl import execution, variance_correction
from dfl.adversary import nodes as adversary_nodes
from dfl.aggregation import rules as aggregation_rules
from dfl.aggregation.compressors import COMPRESSORS
from dfl.algorithms import (ALGORITHMS, CHOCO_FIELDS, COLUMN_STOCHASTIC, NO_VARIANCE_CORRECTION,
                            STATIC_TOPOLOGY_ONLY, USES_GOSSIP_STEPS, USES_KEEP_OPTIMIZER_STATE,
                            USES_MIXER, USES_TOPOLOGY)
from dfl.data import DATASETS, IMAGE_DATASETS, SYNTHETIC_DATASETS
from dfl.data.augment import AUGMENTATIONS
from dfl.errors import UserError
from dfl.imports import is_import_path
from dfl.local import MAX_EPOCHS
from dfl.data.partition import PARTITIONS
from dfl.membership import parse_schedule
from dfl.system import deadline as system_deadline
from dfl.system import model as system_model
from dfl.layers import CONV_IMPLS
from dfl.models import MODELS, REGRESSION_MODELS


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
  _one_of("topology.name", config.topology.name, topologies.NAMES)
  _one_of("topology.mixing_form", config.topology.mixing_form, ("auto", "dense", "sparse"))
  _one_of("topology.weights", config.topology.weights, topologies.WEIGHTS)
  _one_of("topology.schedule", config.topology.schedule, topologies.SCHEDULES)
  a = config.algorithm
  _registered_or_path("algorithm.name", a.name, ALGORITHMS)
  _validate_schedule(config.topology, a.name, config.get("variance_correction"))
  _require(a.lr > 0, f"algorithm.lr must be > 0, got {a.lr}.")
  _require(0 < a.lr_decay <= 1, f"algorithm.lr_decay must be in (0, 1], got {a.lr_decay}.")
  _require(a.local_steps is None or (isinstance(a.local_steps, int) and a.local_steps >= 1),
           f"algorithm.local_steps must be an integer >= 1 or None (the algorithm's default: "
           f"5, dpsgd 1), got {a.local_steps!r}.")
  _require(a.local_epochs or a.local_steps is None or a.local_steps <= MAX_EPOCHS,
           f"algorithm.local_steps={a.local_steps} may read more than {MAX_EPOCHS} epochs of a "
           f"small shard in one round, more than the batch stream supports (dfl/local.py); "
           f"use at most {MAX_EPOCHS}, or algorithm.local_epochs.")
  _require(isinstance(a.batch_size, int) and a.batch_size >= 0,
           f"algorithm.batch_size must be an integer >= 1, or 0 for full batches (the node's "
           f"whole shard every step), got {a.batch_size!r}.")
  _require(a.weight_decay >= 0, f"algorithm.weight_decay must be >= 0, got {a.weight_decay}.")
  clip_norm = a.get("clip_norm")
  _require(clip_norm is None or clip_norm > 0,
           f"algorithm.clip_norm must be > 0 or None (no clipping), got {clip_norm}.")
  keep = a.get("keep_optimizer_state", False)
  _require(isinstance(keep, bool), f"algorithm.keep_optimizer_state must be True or False, got "
           f"{keep!r}.")
  _require(not keep or a.name in USES_KEEP_OPTIMIZER_STATE,
           f"algorithm.keep_optimizer_state=True is only used by "
           f"{sorted(USES_KEEP_OPTIMIZER_STATE)}, not algorithm.name={a.name!r} (dpsgd and "
           f"gossip always keep it; fedavg, fedsam and modest restart it); leave it False.")
  _require(0 < a.client_fraction <= 1,
           f"algorithm.client_fraction must be in (0, 1], got {a.client_fraction}.")
  _require(a.rho >= 0, f"algorithm.rho (SAM radius) must be >= 0, got {a.rho}.")
  _require(isinstance(a.local_epochs, int) and 0 <= a.local_epochs <= MAX_EPOCHS,
           f"algorithm.local_epochs must be an integer in [0, {MAX_EPOCHS}] (0 = use "
           f"local_steps), got {a.local_epochs!r}.")
  if a.gossip_steps is not None:
    _require(a.gossip_steps >= 1, f"algorithm.gossip_steps must be >= 1, got {a.gossip_steps}.")
    _require(a.gossip_steps == 1 or a.name in USES_GOSSIP_STEPS,
             f"algorithm.gossip_steps={a.gossip_steps} is only used by "
             f"{sorted(USES_GOSSIP_STEPS)}, not algorithm.name={a.name!r}; leave it unset.")
  if a.name == "modest":
    s = min(10, config.num_nodes) if a.sample_size is None else a.sample_size
    _require(1 <= s <= config.num_nodes, f"algorithm.sample_size must be in "
             f"[1, num_nodes={config.num_nodes}], got {s}.")
    _require(1 <= a.aggregators <= s, f"algorithm.aggregators must be in "
             f"[1, sample_size={s}], got {a.aggregators}.")
    _require(0 < a.success_fraction <= 1,
             f"algorithm.success_fraction must be in (0, 1], got {a.success_fraction}.")
    _require(isinstance(a.min_models, int) and a.min_models >= 1,
             f"algorithm.min_models must be an integer >= 1, got {a.min_models!r}.")
    _require(isinstance(a.inactivity_rounds, int) and a.inactivity_rounds >= 0,
             f"algorithm.inactivity_rounds must be an integer >= 0 (0: never drop a failed "
             f"node), got {a.inactivity_rounds!r}.")
  else:
    for field, default in (("min_models", 3), ("inactivity_rounds", 50)):
      _require(a[field] == default,
               f"algorithm.{field}={a[field]} is only used by algorithm.name='modest', not "
               f"{a.name!r}; leave it at {default}.")
  _validate_choco(a)
  _require(config.topology.weights not in topologies.COLUMN_STOCHASTIC_WEIGHTS
           or a.name in COLUMN_STOCHASTIC,
           f"topology.weights={config.topology.weights!r} gives column-stochastic weights, which "
           f"only {sorted(COLUMN_STOCHASTIC)} mixes with; algorithm.name={a.name!r} needs rows "
           "summing to 1: use metropolis_hastings, uniform or max_degree.")
  parse_schedule(a.membership)  # raises on a malformed schedule
  _require(not a.membership or a.name == "modest",
           f"algorithm.membership={a.membership!r} is only simulated by algorithm.name='modest', "
           f"not {a.name!r}; leave it empty.")
  try:
    execution.validate_strategy(config.train.execution)
  except ValueError as e:
    raise ValueError(f"train.execution: {e}") from None
  _require(config.train.rounds >= 1, f"train.rounds must be >= 1, got {config.train.rounds}.")
  _require(config.eval.every_rounds >= 1,
           f"eval.every_rounds must be >= 1, got {config.eval.every_rounds}.")
  _one_of("algorithm.aggregation_weights", a.aggregation_weights, ("uniform", "num_samples"))
  _require(a.aggregation_weights == "uniform" or a.name in USES_AGGREGATION_WEIGHTS,
           f"algorithm.aggregation_weights={a.aggregation_weights!r} is only used by "
           f"{sorted(USES_AGGREGATION_WEIGHTS)}, not algorithm.name={a.name!r}; leave it "
           "'uniform'.")
  if a.name in ("gossip", "async_gossip"):
    _require(0 <= a.self_weight < 1,
             f"algorithm.self_weight must be in [0, 1) for {a.name}, got {a.self_weight}.")
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
  _require(isinstance(jitter, (int, float)) and 0 <= jitter < 1,
           f"algorithm.interval_jitter must be in [0, 1), got {jitter!r}.")
  system_model.check_section(system, config.num_nodes)
  if system is None or not system.enabled:
    return
  if system.deadline_seconds > 0:
    _require(a.name in system_deadline.SUPPORTS_DEADLINE,
             f"system.deadline_seconds={system.deadline_seconds} acts inside the rounds of "
             f"{sorted(system_deadline.SUPPORTS_DEADLINE)}, not algorithm.name={a.name!r}; "
             "leave it 0.")
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


def _validate_choco(a) -> None:
  """CHOCO's fields: checked for choco, left at their defaults by every other algorithm."""
  if a.name != "choco":
    for field, default in CHOCO_FIELDS.items():
      _require(a.get(field, default) == default,
               f"algorithm.{field}={a.get(field)!r} is only used by algorithm.name='choco', not "
               f"{a.name!r}; leave it at {default!r}.")
    return
  _one_of("algorithm.compressor", a.compressor, COMPRESSORS)
  _require(0 < a.compression_ratio <= 1,
           f"algorithm.compression_ratio must be in (0, 1] (the fraction of entries kept), got "
           f"{a.compression_ratio}.")
  _require(a.compressor in ("top_k", "random_k")
           or a.compression_ratio == CHOCO_FIELDS["compression_ratio"],
           f"algorithm.compression_ratio={a.compression_ratio} is only used by the compressors "
           f"top_k and random_k, not algorithm.compressor={a.compressor!r}; leave it at "
           f"{CHOCO_FIELDS['compression_ratio']}.")
  _require(isinstance(a.quantization_levels, int) and a.quantization_levels >= 1,
           f"algorithm.quantization_levels must be an integer >= 1 (QSGD's s), got "
           f"{a.quantization_levels!r}.")
  _require(a.compressor == "qsgd"
           or a.quantization_levels == CHOCO_FIELDS["quantization_levels"],
           f"algorithm.quantization_levels={a.quantization_levels} is only used by "
           f"algorithm.compressor='qsgd', not {a.compressor!r}; leave it at "
           f"{CHOCO_FIELDS['quantization_levels']}.")
  _require(0 < a.consensus_step <= 1,
           f"algorithm.consensus_step (CHOCO's gamma) must be in (0, 1], got {a.consensus_step}.")


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


# Algorithms whose aggregation can weight models by their sample counts.
USES_AGGREGATION_WEIGHTS = {"fedavg", "gossip"}


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
  _one_of("variance_correction.target", vc.target, variance_correction.TARGETS)
  _one_of("variance_correction.estimator", vc.estimator, variance_correction.ESTIMATORS)
  _one_of("variance_correction.tensors", vc.tensors, variance_correction.TENSORS)
  _one_of("variance_correction.eps_mode", vc.eps_mode, variance_correction.EPS_MODES)
  _one_of("variance_correction.norm_layers", vc.norm_layers, variance_correction.NORM_LAYERS)
  _one_of("variance_correction.received_weights", vc.received_weights,
          variance_correction.RECEIVED_WEIGHTS)
  _require(0 <= vc.beta <= 1, f"variance_correction.beta must be in [0, 1], got {vc.beta}.")
  _require(vc.strength >= 0,
           f"variance_correction.strength must be >= 0 (0: none, 1: full), got {vc.strength}.")
  _require(vc.eps >= 0, f"variance_correction.eps must be >= 0, got {vc.eps}.")
  _require(vc.eps_mode != "additive" or vc.eps > 0,
           f"variance_correction.eps must be > 0 with eps_mode='additive' (0/0 on a "
           f"zero-variance tensor), got {vc.eps}.")
