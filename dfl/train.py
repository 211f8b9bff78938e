"""The training driver: train_and_evaluate(config, workdir).

The only module that reads the config. It builds data, model, topology and algorithm, then runs
the compiled rounds in chunks of `eval.every_rounds` (one host sync per chunk), evaluating
after each chunk. Outputs in `workdir`: config.json, metrics.jsonl (one JSON object per
evaluation), summary.json at the end.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

import topologies
from dfl.algorithms import USES_TOPOLOGY, Algorithm, BuildContext, build_algorithm
from dfl.config_checks import validate_config
from dfl.data import Dataset, load_dataset
from dfl.data.partition import pack_shards, partition
from dfl.engine import make_chunk_runner
from dfl.evaluation import make_evaluator
from dfl.local import NodeData
from dfl.metric_writers import MultiWriter, make_metric_writer
from dfl.mixing import DenseMixing, SparseMixing, tree_bytes
from dfl.models import cross_entropy_loss, make_model
from dfl.sharding import NodePlacement, is_main_process, make_placement
from dfl.variance_correction import build_mixer

# Tags of the independent random streams derived from config.seed.
_INIT_STREAM, _TRAIN_STREAM, _PARTITION_STREAM, _TOPOLOGY_STREAM = 0, 1, 2, 3
_MEMBERSHIP_STREAM = 4


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


def _seed(override, seed: int, stream: int) -> int:
  return int(override) if override is not None else seed * 1000 + stream


def init_node_params(model, input_shape, num_nodes: int, key: jax.Array, same_init: bool):
  dummy = jnp.zeros((1,) + tuple(input_shape), jnp.float32)
  init = lambda k: model.init(k, dummy)["params"]
  if same_init:
    params = init(key)
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_nodes,) + x.shape), params)
  return jax.vmap(init)(jax.random.split(key, num_nodes))


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


def build_experiment(config) -> Experiment:
  validate_config(config)
  n = config.num_nodes
  placement = make_placement(config.mesh, n)  # before any other JAX work (multi-host init)
  dataset = load_dataset(config.data.name, config.data.dir or None)
  shards = partition(dataset.y_train, n, config.data.partition, alpha=config.data.alpha,
                     classes_per_node=config.data.classes_per_node,
                     seed=_seed(config.data.seed, config.seed, _PARTITION_STREAM))
  indices, sizes = pack_shards(shards)
  data = placement.node_data(dataset.x_train, dataset.y_train, indices, sizes)
  model = make_model(config.model.name, dataset.num_classes, hidden=config.model.hidden)
  root = jax.random.key(config.seed)
  init_params = placement.build(
      lambda key: init_node_params(model, dataset.input_shape, n, key, config.model.same_init),
      jax.random.fold_in(root, _INIT_STREAM))
  options = topology_options(config.topology)
  if options.get("num_rounds") is None:  # schedules place their dense rounds at the run's end
    options["num_rounds"] = config.train.rounds
  topology = topologies.make(config.topology.name, n, weights=config.topology.weights,
                             seed=_seed(config.topology.seed, config.seed, _TOPOLOGY_STREAM),
                             **options)
  loss_fn = cross_entropy_loss(model)
  algorithm = build_algorithm(config.algorithm, BuildContext(
      loss_fn, n, sizes, mixer=build_mixer(config.get("variance_correction")),
      seed=_seed(None, config.seed, _MEMBERSHIP_STREAM)))
  algorithm = algorithm._replace(init=functools.partial(placement.build, algorithm.init))
  evaluate = make_evaluator(model.apply, dataset.x_test, dataset.y_test,
                            batch_size=config.eval.batch_size,
                            local_examples=config.eval.local_examples,
                            execution_strategy=config.train.execution)
  return Experiment(config, dataset, shards, data, model, topology, algorithm,
                    placement.runner(make_chunk_runner(algorithm, config.train.execution)),
                    evaluate,
                    jax.random.fold_in(root, _TRAIN_STREAM),
                    tree_bytes(jax.tree.map(lambda x: x[0], init_params)), init_params, placement)


class CommCounter:
  """Cumulative communication on the host (Python ints: no overflow on long runs)."""

  def __init__(self, num_nodes: int, model_bytes: int):
    self.model_bytes = model_bytes
    self.transfers = 0
    self.control_messages = 0
    self.sent_N = np.zeros(num_nodes, np.int64)
    self.received_N = np.zeros(num_nodes, np.int64)

  def add(self, metrics) -> None:
    self.transfers += int(np.sum(metrics.transfers, dtype=np.int64))
    self.control_messages += int(np.sum(metrics.control_messages, dtype=np.int64))
    self.sent_N += np.asarray(metrics.sent_N, np.int64).sum(axis=0)
    self.received_N += np.asarray(metrics.received_N, np.int64).sum(axis=0)

  def as_dict(self) -> dict:
    return {"comm_transfers": self.transfers,
            "comm_bytes": self.transfers * self.model_bytes,
            "comm_bytes_max_node":
                int(max(self.sent_N.max(), self.received_N.max())) * self.model_bytes,
            "comm_control_messages": self.control_messages}


def evaluation_record(figures: dict, round_done: int, train_loss, comm: CommCounter,
                      wall: float) -> dict:
  """One line of metrics.jsonl from the evaluator's figures (host values)."""
  return {"round": round_done, **{k: float(v) for k, v in figures.items()},
          "train_loss": None if train_loss is None else float(train_loss),
          **comm.as_dict(), "wall_seconds": round(wall, 3)}


def _evaluation_record(exp: Experiment, state, round_done: int, train_loss, comm: CommCounter,
                       wall: float) -> dict:
  figures = jax.device_get(exp.evaluate(state.params))
  return evaluation_record(figures, round_done, train_loss, comm, wall)


def make_summary(records: list[dict], rounds: int, wall: float) -> dict:
  """summary.json from the run's evaluation records."""
  final = records[-1]
  return {"final_test_accuracy": final["test_accuracy"],
          "final_test_accuracy_local_mean": final["test_accuracy_local_mean"],
          "best_test_accuracy": max(r["test_accuracy"] for r in records),
          "final_consensus_distance": final["consensus_distance"],
          "final_train_loss": final["train_loss"], "rounds": rounds,
          "comm_bytes": final["comm_bytes"], "comm_bytes_max_node": final["comm_bytes_max_node"],
          "comm_control_messages": final["comm_control_messages"],
          "wall_seconds": round(wall, 3)}


def _before_merge(records: list, merge_start: int) -> dict:
  """Accuracies of the local models right before a schedule's dense rounds, and of their
  average (what one global merge at that point gives). After a complete-graph merge round of a
  gossip algorithm the local models all equal their average: the final record then shows the
  merged model in both `test_accuracy` and `test_accuracy_local_mean`."""
  before = next(r for r in records if r["round"] == merge_start)
  return {"merge_round": merge_start,
          "before_merge_test_accuracy_local_mean": before["test_accuracy_local_mean"],
          "before_merge_test_accuracy": before["test_accuracy"]}


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs the experiment described by `config`, writing its outputs to `workdir`.

  Returns the summary (also written to workdir/summary.json).
  """
  os.makedirs(workdir, exist_ok=True)
  exp = build_experiment(config)
  main = is_main_process()  # multi-host: every process computes, only process 0 writes
  if main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))
    logging.info("dfl: %s on %s, %d nodes on %d device(s), %s/%s, %d params per node",
                 config.algorithm.name, config.topology.name, config.num_nodes,
                 exp.placement.mesh.size, config.data.name, config.model.name,
                 exp.model_bytes // 4)

  rounds, every = config.train.rounds, config.eval.every_rounds
  sparse = use_sparse_mixing(config.topology.mixing_form, exp.topology)
  # A schedule's dense rounds (e.g. the final global merge) start a chunk, so the local models
  # right before them are evaluated too.
  merge_start = exp.topology.dense_rounds[0] if exp.topology.dense_rounds else None
  static_mixing = (None if exp.topology.time_varying
                   else mixing_operator(exp.topology, 0, sparse))
  comm = CommCounter(config.num_nodes, exp.model_bytes)
  state = exp.algorithm.init(exp.init_params)
  start = time.perf_counter()

  records = [_evaluation_record(exp, state, 0, None, comm, 0.0)]
  with (make_metric_writer(workdir, tensorboard=config.logging.tensorboard) if main
        else MultiWriter([])) as writer, \
      tqdm(total=rounds, desc=f"{config.algorithm.name}/{config.topology.name}", unit="round",
           dynamic_ncols=True, disable=not main) as bar:
    writer.write(records[0])
    done = 0
    while done < rounds:
      length = min(every, rounds - done)
      if merge_start is not None and done < merge_start < done + length:
        length = merge_start - done
      rounds_R = jnp.arange(done, done + length, dtype=jnp.int32)
      if static_mixing is not None:
        mixing, per_round = static_mixing, False
      else:
        ops = [mixing_operator(exp.topology, t, sparse) for t in range(done, done + length)]
        mixing, per_round = jax.tree.map(lambda *xs: jnp.stack(xs), *ops), True
      state, round_metrics = exp.run_chunk(state, exp.data, exp.train_key, rounds_R, mixing,
                                           per_round)
      done += length
      comm.add(jax.device_get(round_metrics))
      train_loss = float(np.mean(jax.device_get(round_metrics.loss)))
      if not np.isfinite(train_loss):
        raise FloatingPointError(f"Training diverged: non-finite loss by round {done}; lower "
                                 f"algorithm.lr (now {config.algorithm.lr}).")
      record = _evaluation_record(exp, state, done, train_loss, comm, time.perf_counter() - start)
      records.append(record)
      writer.write(record)
      bar.update(length)
      bar.set_postfix(acc=f"{record['test_accuracy']:.4f}", loss=f"{train_loss:.4f}")

  summary = make_summary(records, rounds, time.perf_counter() - start)
  if merge_start is not None:
    summary.update(_before_merge(records, merge_start))
  if not main:
    return summary
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  if merge_start is not None:
    print(f"before the {config.topology.schedule} (round {merge_start}): mean local model "
          f"{summary['before_merge_test_accuracy_local_mean']:.4f}, their average "
          f"{summary['before_merge_test_accuracy']:.4f}", flush=True)
  print(f"final test accuracy of the node-averaged model: {summary['final_test_accuracy']:.4f} "
        f"(mean local model {summary['final_test_accuracy_local_mean']:.4f}) after {rounds} "
        f"rounds, {summary['wall_seconds']:.1f} s; outputs in {workdir}", flush=True)
  return summary
