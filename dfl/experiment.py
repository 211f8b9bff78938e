"""Building an experiment from a config: data on device, model, topology, algorithm, evaluator.

`build_experiment(config)` validates the config and returns an `Experiment` with everything the
driver (dfl/train.py) runs; benchmarks and figure scripts use it to get the same pieces without
the driver's loop. Every random stream (initialisation, training, partition, graph, membership)
is derived from config.seed with its own tag, so changing one never shifts another.
"""
from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import topologies
from dfl.adversary import attacks as adversary_attacks
from dfl.adversary import nodes as adversary_nodes
from dfl.adversary.runtime import make_gossip_step, with_round_context
from dfl.aggregation import rules as aggregation_rules
from dfl.algorithms import (COLUMN_STOCHASTIC, STATIC_TOPOLOGY_ONLY, Algorithm, BuildContext,
                            build_algorithm)
from dfl.config_checks import validate_config
from dfl.data import SYNTHETIC_DATASETS, Dataset, load_dataset
from dfl.data.augment import black_pixel, make_augment
from dfl.data.partition import class_counts, pack_shards, partition, personal_test_split
from dfl.engine import make_chunk_runner
from dfl.errors import UserError, user_input
from dfl.evaluation import make_evaluator
from dfl.local import NodeData
from dfl.mixing import DenseMixing, SparseMixing, tree_bytes
from dfl import model_state as model_state_lib
from dfl.models import REGRESSION_MODELS, make_model, model_loss
from dfl.optimum import global_optimum
from dfl.sharding import NodePlacement, make_placement
from dfl.tracing import SectionOverlay
from dfl.system import setup as system_setup
from dfl.variance_correction import build_mixer

# Tags of the independent random streams derived from config.seed.
_INIT_STREAM, _TRAIN_STREAM, _PARTITION_STREAM, _TOPOLOGY_STREAM = 0, 1, 2, 3
_MEMBERSHIP_STREAM, _PERSONAL_TEST_STREAM, _ADVERSARY_STREAM = 4, 5, 6
_CALIBRATION_STREAM = 7  # the batches that re-estimate BatchNorm statistics (eval)
_SYSTEM_STREAM = 8  # the per-node device and link draws (dfl/system)


@dataclasses.dataclass
class Experiment:
  """Everything built from a config, ready to run."""
  config: Any
  dataset: Dataset
  shards: list  # per-node index arrays into the training set
  data: NodeData  # device-resident training data
  model: Any
  topology: topologies.Topology
  algorithm: Algorithm
  run_chunk: Callable
  evaluate: Callable
  train_key: jax.Array
  model_bytes: int
  init_params: Any  # [N, ...]
  placement: NodePlacement  # the device mesh the node axis is sharded over
  personal_splits: Any = None  # eval.personal_test: per-node index arrays into the test set
  optimum: Any = None  # the global objective's minimizer x* (one node's params), if computed
  byzantine_N: Any = None  # [N] bool: the adversary's nodes (None: no adversary configured)
  honest_N: Any = None  # [N] bool: the others, whose figures evaluate() adds
  # make_algorithm(overrides) -> Algorithm: rebuilt with some hyperparameters replaced (batches
  # of runs pass them traced, dfl/train.py); make_algorithm() is `algorithm`.
  make_algorithm: Callable = None
  model_state: Any = None  # dfl.model_state.ModelState of a model with state or dropout
  system: Any = None  # dfl.system.model.SystemModel (None: system.enabled=False)
  samples_N: Any = None  # [N] samples a node reads in a round it trains (with a system model)
  _static_mixing: Any = None  # the static graph's operator, built on first use

  def mixing_for(self, begin: int, end: int):
    """(mixing operator(s), per_round) for rounds [begin, end): the graph's one operator, or
    one per round stacked on a leading R axis for a time-varying graph."""
    sparse = use_sparse_mixing(self.config.topology.mixing_form, self.topology)
    if not self.topology.time_varying:
      if self._static_mixing is None:
        self._static_mixing = mixing_operator(self.topology, 0, sparse)
      return self._static_mixing, False
    ops = [mixing_operator(self.topology, t, sparse) for t in range(begin, end)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *ops), True

  def run_rounds(self, state, begin: int, end: int):
    """Rounds [begin, end) in one compiled call: (state, RoundMetrics stacked over rounds).
    The input state is donated."""
    mixing, per_round = self.mixing_for(begin, end)
    rounds_R = jnp.arange(begin, end, dtype=jnp.int32)
    return self.run_chunk(state, self.data, self.train_key, rounds_R, mixing, per_round)


def _seed(override, seed: int, stream: int) -> int:
  return int(override) if override is not None else seed * 1000 + stream


def init_node_variables(model, input_shape, num_nodes: int, key: jax.Array, same_init: bool):
  """Every node's flax variables {"params": ..., collections...}, leaves [N, ...]."""
  dummy = jnp.zeros((1,) + tuple(input_shape), jnp.float32)
  init = lambda k: model_state_lib.init_variables(model, k, dummy)
  if same_init:
    params = init(key)
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_nodes,) + x.shape), params)
  return jax.vmap(init)(jax.random.split(key, num_nodes))


def _init_cache_key(model, input_shape, num_nodes: int, same_init: bool):
  """What the initialisation program depends on, or None when the model cannot be a key."""
  try:
    hash(model)
  except TypeError:
    return None
  return ("init_node_variables", model, tuple(input_shape), num_nodes, bool(same_init))


def topology_options(topology_config) -> dict:
  """Graph-specific fields of the topology section (degree, edge probability, ...)."""
  common = {"name", "weights", "mixing_form", "seed"}
  return {k: v for k, v in topology_config.items() if k not in common}


def use_sparse_mixing(form: str, topology: topologies.Topology) -> bool:
  if form != "auto":
    return form == "sparse"
  n = topology.num_nodes  # the width covers every round (a final merge makes it N)
  return n > 64 and topology.neighbor_width <= n // 8


def mixing_operator(topology: topologies.Topology, round_index: int, sparse: bool):
  if sparse:
    indices, weights = topology.neighbors(round_index)
    return SparseMixing(jnp.asarray(indices), jnp.asarray(weights, jnp.float32))
  return DenseMixing(jnp.asarray(topology.matrix(round_index), jnp.float32))


def check_fits_data(config, num_train: int) -> None:
  """Impossible sizes fail before anything grows with them (a partition of 10^7 nodes)."""
  if config.num_nodes > num_train:
    raise UserError(f"num_nodes={config.num_nodes} exceeds the {num_train} training samples of "
                    f"data.name={config.data.name!r}: every node needs at least one sample.")


def synthetic_problem(config, seed: int):
  """The options of a generated dataset (least_squares), else None."""
  if config.data.name != "least_squares":
    return None
  return dict(num_nodes=config.num_nodes, dim=config.data.dim,
              samples_per_node=config.data.samples_per_node,
              heterogeneity=float(config.data.heterogeneity), seed=seed)


def warn_batch_exceeds_shards(batch_size: int, sizes) -> None:
  sizes = np.asarray(sizes)
  if batch_size > sizes.max():  # (batch_size 0 asks for full batches)
    print(f"warning: algorithm.batch_size={batch_size} is larger than every node's shard "
          f"({sizes.min()}-{sizes.max()} samples): each local step uses a node's whole shard.",
          file=sys.stderr, flush=True)


def check_topology_fits_algorithm(name: str, topology: topologies.Topology) -> None:
  """CHOCO needs a fixed graph; push-sum a column-stochastic W in every round."""
  if name in STATIC_TOPOLOGY_ONLY and topology.time_varying:
    raise UserError(f"algorithm.name={name!r} keeps copies of its neighbours' models and needs a "
                    f"fixed graph, but topology.name={topology.name!r} changes every round; use a "
                    "static topology.")
  if name in COLUMN_STOCHASTIC and not topology.column_stochastic:
    raise UserError(f"algorithm.name={name!r} needs a column-stochastic W, but topology "
                    f"{topology.name!r} with weights={topology.description.get('weights')!r} is "
                    "only row-stochastic (a directed graph); set topology.weights="
                    "'column_uniform'.")


def _kwargs(section) -> dict:
  kwargs = section.get("kwargs")
  return {} if kwargs is None else dict(kwargs.to_dict() if hasattr(kwargs, "to_dict") else kwargs)


def with_overrides(section, prefix: str, overrides: dict):
  """`section` with the fields `overrides` names as "prefix.field" replaced (values may be
  traced); the section itself when none applies (or when it is None)."""
  mine = {k[len(prefix) + 1:]: v for k, v in overrides.items() if k.startswith(prefix + ".")}
  return section if section is None or not mine else SectionOverlay(section, mine)


def check_augment(augment: str, dataset: Dataset) -> None:
  """Crops and flips need H x W x C samples (checked here for datasets named by import path)."""
  if augment != "none" and len(dataset.input_shape) != 3:
    raise UserError(f"data.augment={augment!r} needs image samples of shape H x W x C, but "
                    f"data.name={dataset.name!r} has samples of shape {dataset.input_shape}.")


def build_experiment(config, *, model=None, dataset: Dataset | None = None) -> Experiment:
  """Builds everything `config` describes; `model` (a flax Module) and `dataset` (a Dataset)
  given as Python objects replace model.name / data.name."""
  validate_config(config)
  n = config.num_nodes
  placement = make_placement(config.mesh, n)  # before any other JAX work (multi-host init)
  data_seed = _seed(config.data.seed, config.seed, _PARTITION_STREAM)
  if dataset is None:
    with user_input():  # what fails here is the named data, not the code
      dataset = load_dataset(config.data.name, config.data.dir or None, _kwargs(config.data),
                             problem=synthetic_problem(config, data_seed))
  check_augment(config.data.augment, dataset)
  check_fits_data(config, len(dataset.y_train))  # before the partition, which grows with N
  # A synthetic per-node problem gives node i its own rows, whatever data.partition says.
  scheme = "natural" if config.data.name in SYNTHETIC_DATASETS else config.data.partition
  with user_input(ValueError):
    shards = partition(dataset.y_train, n, scheme, alpha=config.data.alpha,
                       classes_per_node=config.data.classes_per_node,
                       min_samples=config.data.get("min_samples", 0),
                       node_ids=dataset.node_ids_train, seed=data_seed)
  options = topology_options(config.topology)
  options.update(adversary_nodes.attached_options(config.get("adversary")))  # Sybil identities
  if options.get("num_rounds") is None:  # schedules place their dense rounds at the run's end
    options["num_rounds"] = config.train.rounds
  with user_input(ValueError):  # topologies validates its options with ValueErrors
    topology = topologies.make(config.topology.name, n, weights=config.topology.weights,
                               seed=_seed(config.topology.seed, config.seed, _TOPOLOGY_STREAM),
                               **options)
  check_topology_fits_algorithm(config.algorithm.name, topology)
  byzantine_N, gossip_step = _adversary_and_aggregation(config, topology)
  x_train, y_train = dataset.x_train, dataset.y_train
  if byzantine_N is not None and config.adversary.attack == "label_flip":
    x_train, y_train, shards = adversary_nodes.poison_labels(
        x_train, y_train, shards, byzantine_N, dataset.num_classes)
  indices, sizes = pack_shards(shards)
  warn_batch_exceeds_shards(config.algorithm.batch_size, sizes)
  data = placement.node_data(x_train, y_train, indices, sizes)
  if model is None:
    model = make_model(config.model.name, dataset.num_classes, _kwargs(config.model),
                       norm=config.model.get("norm", "group"), hidden=config.model.hidden,
                       conv=config.model.conv)
  root = jax.random.key(config.seed)
  init_params, init_model_state = model_state_lib.split_variables(placement.build(
      lambda key: init_node_variables(model, dataset.input_shape, n, key, config.model.same_init),
      jax.random.fold_in(root, _INIT_STREAM),
      cache_key=_init_cache_key(model, dataset.input_shape, n, config.model.same_init)))
  l2 = float(config.model.get("l2", 0.0))
  average_stats = config.model.get("average_stats", True)
  loss_fn, stateful = model_loss(config.model.name, model, init_model_state, l2=l2,
                                 average_stats=average_stats)
  calibration = _check_model_state(config, stateful, gossip_step, x_train, shards, config.seed)
  augment = make_augment(config.data.augment, dataset.input_shape,
                         pad_value_C=black_pixel(dataset.name, dataset.input_shape[-1]))
  model_bytes = tree_bytes(jax.tree.map(lambda x: x[0], init_params))
  if stateful is not None and average_stats:  # the statistics travel with every model
    model_bytes += tree_bytes(jax.tree.map(lambda x: x[0], init_model_state))
  system = system_setup.build(config, sizes, topology, model_bytes, _seed(
      config.get("system", {}).get("seed"), config.seed, _SYSTEM_STREAM))

  def make_algorithm(overrides: dict | None = None) -> Algorithm:
    """The algorithm of this config; `overrides` ({"algorithm.lr": value, ...}) replace fields of
    the algorithm and variance_correction sections, e.g. with traced values (batched runs)."""
    overrides = overrides or {}
    mixer = gossip_step or build_mixer(with_overrides(config.get("variance_correction"),
                                                      "variance_correction", overrides))
    algorithm = build_algorithm(with_overrides(config.algorithm, "algorithm", overrides),
                                BuildContext(loss_fn, n, sizes,
                                             mixer=system_setup.mixer(system, config, mixer),
                                             seed=_seed(None, config.seed, _MEMBERSHIP_STREAM),
                                             merge_rounds=topology.dense_rounds,
                                             augment=augment,  # on every local minibatch
                                             model_state=stateful,
                                             node_seconds=None if system is None else
                                             system.node_seconds_N,
                                             tick_seconds=0.0 if system is None else
                                             system.model.tick_seconds))
    if gossip_step is not None:  # the step reads its key, round and attackers from the round
      algorithm = with_round_context(algorithm, byzantine_N)
    algorithm = system_setup.wrap(system, config, algorithm, model_bytes)  # round deadline
    return algorithm._replace(init=functools.partial(placement.build, algorithm.init))

  with user_input(ValueError):  # builders check the algorithm section, they run no JAX code
    algorithm = make_algorithm()
  personal = None
  if config.eval.personal_test:
    personal = personal_test_split(
        class_counts(y_train, shards, dataset.num_classes), dataset.y_test,
        np.random.default_rng(_seed(None, config.seed, _PERSONAL_TEST_STREAM)))
  optimum = global_optimum(config.model.name, jax.tree.map(lambda x: x[0], init_params),
                           x_train, y_train, shards, dataset.num_classes, l2)
  evaluate = make_evaluator(model.apply, dataset.x_test, dataset.y_test,
                            batch_size=config.eval.batch_size,
                            local_examples=config.eval.local_examples,
                            local_subset=config.eval.local_subset,
                            execution_strategy=config.train.execution,
                            personal_splits=personal,
                            regression=config.model.name in REGRESSION_MODELS, optimum=optimum,
                            stateful=stateful is not None, calibration_x=calibration)
  return Experiment(config, dataset, shards, data, model, topology, algorithm,
                    placement.runner(make_chunk_runner(algorithm, config.train.execution)),
                    evaluate,
                    jax.random.fold_in(root, _TRAIN_STREAM),
                    model_bytes, init_params, placement,
                    personal, optimum, byzantine_N, None if byzantine_N is None else ~byzantine_N,
                    make_algorithm, stateful, None if system is None else system.model,
                    None if system is None else system.samples_N)


def _check_model_state(config, stateful, gossip_step, x_train, shards, seed: int):
  """The model-state fields against the model; returns the calibration batches [M, B, ...]
  of eval.recompute_stats_batches (None when 0)."""
  average_stats = config.model.get("average_stats", True)
  batches = config.eval.get("recompute_stats_batches", 0)
  name = config.model.name
  if stateful is None:
    if average_stats is not True or batches:
      raise UserError(f"model.average_stats={average_stats} and eval.recompute_stats_batches="
                      f"{batches} are for models with state (BatchNorm statistics), but "
                      f"model.name={name!r} has none; leave them at True and 0.")
    return None
  if gossip_step is not None:
    raise UserError(f"model.name={name!r} has {stateful.kind()}: adversaries and robust "
                    "aggregation rules (adversary.attack, aggregation.rule) do not support "
                    "models with state or dropout yet.")
  if not batches:
    return None
  if model_state_lib.STATS not in stateful.collections:
    raise UserError(f"eval.recompute_stats_batches={batches} re-estimates BatchNorm statistics, "
                    f"but model.name={name!r} has no {model_state_lib.STATS!r} collection; "
                    "set it to 0.")
  batch_size = config.algorithm.batch_size or config.eval.batch_size
  return model_state_lib.calibration_batches(x_train, shards, num_batches=batches,
                                             batch_size=batch_size,
                                             seed=_seed(None, seed, _CALIBRATION_STREAM))


def _adversary_and_aggregation(config, topology: topologies.Topology):
  """(byzantine_N or None, gossip step or None) from the `adversary` and `aggregation`
  sections; (None, None) when both are at their defaults (plain gossip, `dfl.mixing.mix`)."""
  n = config.num_nodes
  adversary, aggregation = config.get("adversary"), config.get("aggregation")
  attacked = adversary is not None and adversary.attack != "none"
  robust = aggregation is not None and aggregation.rule != "mean"
  if not (attacked or robust):
    return None, None
  indices_NxK, weights_NxK = topology.neighbors(0)
  degree_N = adversary_nodes.degrees(indices_NxK, weights_NxK)
  with user_input(ValueError):
    aggregation_rules.check_neighbourhoods(aggregation if robust else None, 1 + degree_N)
    rule = aggregation_rules.build_rule(aggregation, num_rounds=config.train.rounds)
  byzantine_N, attack = None, None
  if attacked:
    f = adversary_nodes.num_byzantine(adversary, n)
    byzantine_N = adversary_nodes.choose_byzantine(
        adversary, n, degree_N, _seed(adversary.seed, config.seed, _ADVERSARY_STREAM))
    attack = adversary_attacks.build_attack(adversary, n, f)
  return byzantine_N, make_gossip_step(rule, attack)
