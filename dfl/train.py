"""The training driver: train_and_evaluate(config, workdir).

It builds the experiment from the config (dfl/experiment.py), then runs the compiled rounds in
chunks of `eval.every_rounds` (one host sync per chunk), evaluating after each chunk and
checkpointing at chunk ends (dfl/checkpoint.py). Outputs in `workdir`:
config.json, metrics.jsonl (one JSON object per evaluation), checkpoints/, summary.json at the
end. Re-running the same command in the same workdir resumes from the newest checkpoint.
A run holds the workdir's lock (dfl/workdir_lock.py) from before it writes anything there until
it exits; a second run in the same workdir fails at once with WorkdirLocked.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import signal
import sys
import time
from typing import Any, Sequence

import flax.linen
import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from dfl import checkpoint, workdir_lock
from dfl.batching import RunBatch, compatible_groups, max_batch_runs
from dfl.config_checks import validate_config
from dfl.data import Dataset, as_dataset, dataset_fields
from dfl.errors import UserError
from dfl.experiment import (Experiment, build_experiment, mixing_operator,  # noqa: F401
                            use_sparse_mixing)
from dfl.metric_writers import TENSORBOARD_SUBDIR, MultiWriter, make_metric_writer
from dfl.progress import progress_bar
from dfl.sharding import initialize_distributed, is_main_process
from dfl.system.clock import make_clock
from dfl.workdir_lock import WorkdirLock, WorkdirLocked, read_holder

class CommCounter:
  """Cumulative communication on the host (Python ints and int64: no overflow on long runs).

  Bytes are counted per message: a round's transfers weigh its `RoundMetrics.message_bytes`
  each (what a compressed or augmented message carries), or one model's bytes when the
  algorithm leaves it None. `comm_bytes_per_node_round` is the mean over nodes and rounds of the
  bytes sent in the evaluation period just counted (the rounds since the previous record; 0 in
  the record of round 0): comm_bytes of those rounds / (N * rounds).
  """

  def __init__(self, num_nodes: int, model_bytes: int):
    self.num_nodes = num_nodes
    self.model_bytes = model_bytes
    self.transfers = 0
    self.control_messages = 0
    self.sent_N = np.zeros(num_nodes, np.int64)
    self.received_N = np.zeros(num_nodes, np.int64)
    self.bytes = 0
    self.bytes_sent_N = np.zeros(num_nodes, np.int64)
    self.bytes_received_N = np.zeros(num_nodes, np.int64)
    self.period_bytes = 0  # bytes of the rounds counted by the last `add`
    self.period_rounds = 0

  def add(self, metrics) -> None:
    transfers_R = np.atleast_1d(np.asarray(metrics.transfers, np.int64))
    sent_RxN = np.asarray(metrics.sent_N, np.int64).reshape(-1, self.num_nodes)
    received_RxN = np.asarray(metrics.received_N, np.int64).reshape(-1, self.num_nodes)
    if metrics.message_bytes is None:
      bytes_R = np.full(transfers_R.shape, self.model_bytes, np.int64)
    else:
      bytes_R = np.broadcast_to(np.asarray(metrics.message_bytes, np.int64), transfers_R.shape)
    self.transfers += int(transfers_R.sum())
    self.control_messages += int(np.sum(metrics.control_messages, dtype=np.int64))
    self.sent_N += sent_RxN.sum(axis=0)
    self.received_N += received_RxN.sum(axis=0)
    self.period_bytes = int((transfers_R * bytes_R).sum())
    self.period_rounds = int(np.asarray(metrics.loss).size)
    self.bytes += self.period_bytes
    self.bytes_sent_N += (sent_RxN * bytes_R[:, None]).sum(axis=0)
    self.bytes_received_N += (received_RxN * bytes_R[:, None]).sum(axis=0)

  def as_dict(self) -> dict:
    per_node_round = (self.period_bytes / (self.num_nodes * self.period_rounds)
                      if self.period_rounds else 0.0)
    return {"comm_transfers": self.transfers,
            "comm_bytes": self.bytes,
            "comm_bytes_max_node":
                int(max(self.bytes_sent_N.max(), self.bytes_received_N.max())),
            "comm_bytes_per_node_round": per_node_round,
            "comm_control_messages": self.control_messages}

  def state_dict(self) -> dict:
    return {"transfers": self.transfers, "control_messages": self.control_messages,
            "sent_N": self.sent_N.tolist(), "received_N": self.received_N.tolist(),
            "bytes": self.bytes, "bytes_sent_N": self.bytes_sent_N.tolist(),
            "bytes_received_N": self.bytes_received_N.tolist(),
            "period_bytes": self.period_bytes, "period_rounds": self.period_rounds}

  def load_state_dict(self, saved: dict) -> None:
    self.transfers = int(saved["transfers"])
    self.control_messages = int(saved["control_messages"])
    self.sent_N = np.asarray(saved["sent_N"], np.int64)
    self.received_N = np.asarray(saved["received_N"], np.int64)
    # Checkpoints written before bytes were counted per message: every transfer was one model.
    self.bytes = int(saved.get("bytes", self.transfers * self.model_bytes))
    self.bytes_sent_N = np.asarray(saved.get("bytes_sent_N", self.sent_N * self.model_bytes),
                                   np.int64)
    self.bytes_received_N = np.asarray(
        saved.get("bytes_received_N", self.received_N * self.model_bytes), np.int64)
    self.period_bytes = int(saved.get("period_bytes", 0))
    self.period_rounds = int(saved.get("period_rounds", 0))


def evaluation_record(figures: dict, round_done: int, train_loss, comm: CommCounter,
                      wall: float, clock=None) -> dict:
  """One line of metrics.jsonl from the evaluator's figures (host values)."""
  return {"round": round_done, **{k: float(v) for k, v in figures.items()},
          "train_loss": None if train_loss is None else float(train_loss),
          **comm.as_dict(), **(clock.as_dict() if clock else {}),
          "wall_seconds": round(wall, 3)}


# Figures on the per-node test splits (eval.personal_test), in metrics.jsonl when enabled.
PERSONAL_METRICS = ("test_accuracy_personal", "test_accuracy_personal_global")
# Figures over the honest nodes only, in metrics.jsonl when an adversary is configured.
HONEST_METRICS = ("test_accuracy_honest", "test_accuracy_honest_local_mean",
                  "consensus_distance_honest")


# Figures of a run with a known global minimizer x* (least squares, L2 logistic regression).
OPTIMUM_METRICS = ("distance_to_optimum", "distance_to_optimum_local_mean")


def headline(record: dict) -> tuple[str, str, float]:
  """(short name, metrics.jsonl key, value) of a record's main figure: the averaged model's
  test accuracy, or for a regression (no accuracy) its distance to x* or its test loss."""
  for short, key in (("acc", "test_accuracy"), ("dist", "distance_to_optimum"),
                     ("test_loss", "test_loss")):
    if key in record:
      return short, key, record[key]
  raise KeyError(f"no headline figure in {sorted(record)}")


def make_summary(records: list[dict], rounds: int, wall: float) -> dict:
  """summary.json from the run's evaluation records.

  Classification: final/best test accuracy. A regression (no accuracy keys) gets
  final_test_loss / best_test_loss (lowest) instead; with a known x*, final_distance_to_optimum
  and final_distance_to_optimum_local_mean either way.
  """
  final = records[-1]
  personal = {f"final_{k}": final[k] for k in PERSONAL_METRICS + HONEST_METRICS if k in final}
  if "test_accuracy" in final:
    figures = {"final_test_accuracy": final["test_accuracy"],
               "final_test_accuracy_local_mean": final["test_accuracy_local_mean"],
               "best_test_accuracy": max(r["test_accuracy"] for r in records)}
  else:
    figures = {"final_test_loss": final["test_loss"],
               "final_test_loss_local_mean": final["test_loss_local_mean"],
               "best_test_loss": min(r["test_loss"] for r in records)}
  figures.update({f"final_{k}": final[k] for k in OPTIMUM_METRICS if k in final})
  return {**figures,
          "final_consensus_distance": final["consensus_distance"],
          "final_train_loss": final["train_loss"], "rounds": rounds,
          "comm_bytes": final["comm_bytes"], "comm_bytes_max_node": final["comm_bytes_max_node"],
          "comm_control_messages": final["comm_control_messages"],
          "wall_seconds": round(wall, 3), **personal}


def _before_merge(records: list, merge_start: int) -> dict:
  """Accuracies of the local models right before a schedule's dense rounds, and of their
  average (what one global merge at that point gives). After a complete-graph merge round of a
  gossip algorithm the local models all equal their average: the final record then shows the
  merged model in both `test_accuracy` and `test_accuracy_local_mean`."""
  before = next(r for r in records if r["round"] == merge_start)
  figure = "test_accuracy" if "test_accuracy" in before else "test_loss"  # a regression: loss
  return {"merge_round": merge_start,
          f"before_merge_{figure}_local_mean": before[f"{figure}_local_mean"],
          f"before_merge_{figure}": before[figure]}


@dataclasses.dataclass
class Progress:
  """What the driver carries from chunk to chunk; a checkpoint holds all of it."""
  round: int  # rounds completed
  state: Any  # the algorithm state, every leaf [N, ...]
  comm: CommCounter
  wall_offset: float  # seconds earlier processes spent on this run, up to their checkpoint
  records: list  # the evaluation records so far, as in metrics.jsonl
  clock: Any = None  # dfl.system.clock.SimClock of the simulated time; None: system.enabled=False


OUTPUTS = ("config.json", "metrics.jsonl", "summary.json", TENSORBOARD_SUBDIR)


def run_config_dict(config_dict: dict) -> dict:
  """A config (as a dict) the way it is compared on resume. A schedule's horizon
  (topology.num_rounds) defaults to train.rounds; it is spelled out, so extending train.rounds
  is refused where it would move a final merge."""
  topology = config_dict.get("topology", {})
  if topology.get("schedule", "none") != "none" and topology.get("num_rounds") is None:
    config_dict = {**config_dict, "topology": {**topology,
                                               "num_rounds": config_dict["train"]["rounds"]}}
  return config_dict


def run_meta(config) -> dict:
  """What every checkpoint of a run records besides its round: the config (as compared on
  resume), its fingerprint, and the jax version and backend that wrote it."""
  config_dict = run_config_dict(checkpoint.config_to_dict(config))
  return {"config": config_dict, "config_fingerprint": checkpoint.config_fingerprint(config_dict),
          "jax": jax.__version__, "backend": jax.default_backend()}


def _check_previous_config(workdir: str, now: dict) -> None:
  """A workdir without checkpoints may still hold outputs of another run: never overwrite it."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(os.path.join(workdir, "metrics.jsonl")) and os.path.exists(path):
    with open(path) as f:
      saved = run_config_dict(json.load(f))
    for line in checkpoint.check_resumable(saved, now, what=f"the run in {workdir}"):
      logging.info("config differs from the previous run in %s (allowed): %s", workdir, line)


def start_or_resume(exp: Experiment, workdir: str,
                    checkpoints: checkpoint.RunCheckpoints) -> Progress:
  """Restores the newest readable checkpoint in `workdir`, or starts at round 0 (no records
  yet: the driver evaluates round 0 of a batch's runs together)."""
  config = exp.config
  now = run_config_dict(checkpoint.config_to_dict(config))
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  comm = CommCounter(config.num_nodes, exp.model_bytes)
  clock = make_clock(exp)
  initial = exp.algorithm.init(exp.init_params)

  def check(meta: dict) -> None:
    where = f"the checkpoint of round {meta.get('round')} in {checkpoints.directory}"
    for line in checkpoint.check_resumable(meta["config"], now, what=where):
      print(f"resuming with a changed setting (allowed): {line}", file=sys.stderr, flush=True)
      if line.startswith(checkpoint.RECOMPILING_CHANGES):
        print("  rounds are now compiled or placed differently, so the result may differ in the "
              "last bits from an uninterrupted run.", file=sys.stderr, flush=True)
    if (meta.get("jax"), meta.get("backend")) != (jax.__version__, jax.default_backend()):
      logging.warning("Resuming a checkpoint written with jax %s on %s under jax %s on %s: "
                      "bitwise equality with an uninterrupted run is not guaranteed.",
                      meta.get("jax"), meta.get("backend"), jax.__version__,
                      jax.default_backend())

  main = is_main_process()  # multi-host: every process computes, only process 0 writes
  restored = checkpoints.restore(initial, check)
  if restored is None:
    _check_previous_config(workdir, now)
    if main:
      checkpoint.write_jsonl_atomic(metrics_path, [])  # _run_batch logs round 0 first
    return Progress(0, initial, comm, 0.0, [], clock)
  if restored.round > config.train.rounds:
    raise ValueError(f"train.rounds={config.train.rounds} is below the round of the newest "
                     f"checkpoint ({restored.round}) in {checkpoints.directory}; use a new "
                     "--workdir or --config.checkpoint.fresh=True for a shorter run.")
  comm.load_state_dict(restored.meta["comm"])
  if clock is not None:
    clock.load_state_dict(restored.meta["clock"])
  records = checkpoint.rewind_metrics(metrics_path, restored.round, restored.meta["record"],
                                      write=main)
  print(f"resuming from the checkpoint of round {restored.round} in {checkpoints.directory}",
        file=sys.stderr, flush=True)
  return Progress(restored.round, restored.state, comm, restored.meta["wall_seconds"], records,
                  clock)


def chunk_end(exp: Experiment, begin: int) -> int:
  """The next multiple of eval.every_rounds (or train.rounds), counted from round 0, so a
  resumed run compiles and runs exactly the chunks of an uninterrupted one. A schedule's
  dense rounds (e.g. the final global merge) start a chunk, so the local models right before
  them are evaluated too."""
  every, rounds = exp.config.eval.every_rounds, exp.config.train.rounds
  end = min((begin // every + 1) * every, rounds)
  merge_start = _merge_start(exp)
  if merge_start is not None and begin < merge_start < end:
    end = merge_start
  return end


def _merge_start(exp: Experiment):
  return exp.topology.dense_rounds[0] if exp.topology.dense_rounds else None


def checkpoint_due(config, begin: int, end: int) -> bool:
  """After the chunk of rounds [begin, end): at the last round, or if it reached or passed a
  multiple of checkpoint.every_rounds (chunk ends are the only points with a state on host)."""
  every = config.checkpoint.every_rounds
  return end == config.train.rounds or (every > 0 and end // every > begin // every)


def _divergence_error(exp: Experiment, begin: int, end: int, loss_R: np.ndarray,
                      bad_nodes: list, last_good) -> checkpoint.Diverged:
  nonfinite_R = np.flatnonzero(~np.isfinite(loss_R))
  loss_part = (f"the training loss first became non-finite in round {begin + nonfinite_R[0] + 1}"
               if nonfinite_R.size else "the training loss stayed finite")
  node_part = (f"non-finite state on nodes {bad_nodes} ({len(bad_nodes)} of "
               f"{exp.config.num_nodes})" if bad_nodes else "the state is finite")
  span = f"round {end}" if end == begin + 1 else f"rounds {begin + 1}-{end}"
  kept = ("no checkpoint was written yet" if last_good is None else
          f"the last good checkpoint (round {last_good}) is kept")
  return checkpoint.Diverged(
      f"Training diverged in {span}: {loss_part}; after round {end}, "
      f"{node_part}. Nothing of these rounds was saved; {kept}. Lower algorithm.lr (now "
      f"{exp.config.algorithm.lr}) and start over with a new --workdir or "
      "--config.checkpoint.fresh=True.")


@dataclasses.dataclass
class Run:
  """One run of a batch: what the driver keeps for it besides the batch's state."""
  exp: Experiment
  workdir: str
  checkpoints: checkpoint.RunCheckpoints
  progress: Progress
  meta: dict
  failure: BaseException | None = None  # set when the run diverged (the others go on)


def _check_chunk(run: Run, begin: int, end: int, loss_R: np.ndarray, state) -> None:
  """Raises Diverged if a loss of the chunk or a node's state is non-finite (the run's
  checkpoints untouched; a save in flight, which holds a good state, completes first)."""
  bad_nodes = checkpoint.nonfinite_nodes(state)
  if bad_nodes or not np.isfinite(loss_R).all():
    run.checkpoints.wait()
    raise _divergence_error(run.exp, begin, end, loss_R, bad_nodes,
                            run.checkpoints.latest_round())


def _run_batch(runs: list[Run], guard: checkpoint.PreemptionGuard) -> float:
  """The loop, for S >= 1 runs at the same round sharing one program (dfl/batching.py):
  chunks of rounds (see chunk_end), an evaluation after each, each run's checkpoints at chunk
  ends. A single run raises Diverged; in a batch a diverging run stops alone (its error kept in
  `Run.failure`, its last good checkpoint kept) and the others finish. Returns the seconds spent.
  """
  batch = RunBatch([r.exp for r in runs])
  exp0, size = runs[0].exp, len(runs)
  config = exp0.config
  rounds = config.train.rounds
  main = is_main_process()  # multi-host: every process computes, only process 0 writes
  state = batch.stack([r.progress.state for r in runs])
  start = time.perf_counter()
  desc = f"{config.algorithm.name}/{config.topology.name}" + (f" x{size} runs" if size > 1 else "")
  with contextlib.ExitStack() as stack:
    writers = [stack.enter_context(
        make_metric_writer(r.workdir, tensorboard=config.logging.tensorboard, mode="a",
                           resume_round=r.progress.round) if main else MultiWriter([]))
               for r in runs]
    bar = stack.enter_context(progress_bar(total=rounds, initial=runs[0].progress.round,
                                           desc=desc, disable=not main))
    done = runs[0].progress.round
    if done == 0:
      for run, figures, writer in zip(runs, batch.evaluate(state), writers):
        run.progress.records = [evaluation_record(figures, 0, None, run.progress.comm, 0.0,
                                                  run.progress.clock)]
        writer.write(run.progress.records[0])
    while done < rounds:
      begin, end = done, chunk_end(exp0, done)
      state, metrics = batch.run_rounds(state, begin, end)
      metrics = jax.device_get(metrics)
      losses = {}
      for s, run in enumerate(runs):
        if run.failure is not None:
          continue
        metrics_s = metrics if size == 1 else jax.tree.map(lambda x, s=s: x[s], metrics)
        loss_R = np.asarray(metrics_s.loss, np.float64)
        try:
          _check_chunk(run, begin, end, loss_R, batch.unstack(state, s))
        except checkpoint.Diverged as e:
          if size == 1:
            raise
          run.failure = e
          print(f"run {run.workdir} stopped: {e}", file=sys.stderr, flush=True)
          continue
        run.progress.comm.add(metrics_s)
        if run.progress.clock is not None:  # the simulated time (dfl/system)
          run.progress.clock.add(metrics_s)
        run.progress.round = end
        losses[s] = float(np.mean(loss_R))
      done = end
      if not losses:  # every run of the batch diverged
        break
      figures = batch.evaluate(state)
      walls = {}
      for s, loss in losses.items():
        run = runs[s]
        walls[s] = run.progress.wall_offset + time.perf_counter() - start
        record = evaluation_record(figures[s], end, loss, run.progress.comm, walls[s],
                                   run.progress.clock)
        run.progress.records.append(record)
        writers[s].write(record)
      checkpoint.self_signal_hook(end, "evaluated", runs[min(losses)].checkpoints)
      preempted = guard.signum is not None and end < rounds
      if preempted or checkpoint_due(config, begin, end):
        for s in losses:
          run = runs[s]
          run.checkpoints.save(end, batch.unstack(state, s),
                               {**run.meta, "comm": run.progress.comm.state_dict(),
                                "wall_seconds": walls[s],
                                "record": run.progress.records[-1],
                                **({"clock": run.progress.clock.state_dict()}
                                   if run.progress.clock else {})})
        checkpoint.self_signal_hook(end, "saving", runs[min(losses)].checkpoints)
      bar.update(end - begin)
      first = runs[min(losses)].progress.records[-1]
      short, _, value = headline(first)
      if size > 1:
        value = float(np.mean([headline(runs[s].progress.records[-1])[2] for s in losses]))
      bar.set_postfix(**{short: f"{value:.4g}", "loss": f"{np.mean(list(losses.values())):.4f}"})
      if preempted:
        for run in runs:
          run.checkpoints.wait()
        where = ("checkpoint written to " + runs[0].checkpoints.directory if size == 1 else
                 "each run's checkpoint is in its workdir")
        raise checkpoint.Preempted(guard.signum, end, (
            f"Stopped by {signal.Signals(guard.signum).name} after round {end} of {rounds}; "
            f"{where}. Run the same command{' with the same --workdir' if size == 1 else ''} to "
            f"resume from round {end}."))
  for s, run in enumerate(runs):
    if run.failure is None:
      run.progress.state = batch.unstack(state, s)
  return time.perf_counter() - start


def lock_workdir(workdir: str) -> WorkdirLock | None:
  """Takes the workdir's lock for this run; raises WorkdirLocked if another run holds it.

  Multi-host: process 0 (the one that writes outputs) holds it for the whole job and tells the
  others whether it got it, so that every process fails together instead of waiting on process
  0 in the first collective. Returns the lock to release (None on the other processes).
  """
  lock, error = None, None
  if is_main_process():
    try:
      lock = WorkdirLock(workdir).acquire()
    except WorkdirLocked as e:
      error = e
  if jax.process_count() > 1:
    ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not ok and error is None:
      error = WorkdirLocked(workdir, read_holder(workdir))
  if error is not None:
    raise error
  return lock


def train_and_evaluate(config, workdir: str, *, model=None, dataset=None) -> dict:
  """Runs the experiment described by `config` in `workdir`, resuming what is already there.

  `model` (a flax Module) and `dataset` (a `dfl.data.Dataset`, or a dict with x_train, y_train,
  x_test, y_test and optionally num_classes and node_ids_train) given as Python objects, e.g.
  from a notebook, replace model.name / data.name; config.json records them as
  "object:<name>", and a resume must pass the same objects again.

  A workdir holding checkpoints of the same run (config equal up to checkpoint.RESUMABLE_CHANGES)
  continues from the newest readable one; one of a different run raises ConfigMismatchError
  unless checkpoint.fresh discards it. Raises WorkdirLocked at once if another live run holds
  the workdir, checkpoint.Preempted after SIGTERM/SIGINT (a checkpoint is written first),
  checkpoint.Diverged on non-finite loss or state, and a checkpoint.CheckpointError (DiskFull,
  NoReadableCheckpoint, CheckpointWriteError) whose one-line message says what was kept.
  Returns the summary (also written to workdir/summary.json).
  """
  config, dataset = with_objects(config, model, dataset)
  validate_config(config)
  initialize_distributed(config.mesh)  # before jax.process_index() is first asked
  os.makedirs(workdir, exist_ok=True)
  lock = lock_workdir(workdir)
  try:
    return _train_and_evaluate(config, workdir, model, dataset)
  except OSError as e:
    if checkpoint.is_disk_full(e):  # metrics.jsonl, summary.json, ...: say it in one line
      filename = getattr(e, "filename", None)
      what = os.path.relpath(filename, workdir) if isinstance(filename, str) else "its outputs"
      raise checkpoint.disk_full_error(workdir, what) from None
    raise
  finally:
    if lock is not None:
      lock.release()


def with_objects(config, model, dataset):
  """The config a run with Python objects records, and the dataset checked as a Dataset."""
  if model is None and dataset is None:
    return config, None
  config = copy.deepcopy(config)
  if model is not None:
    if not isinstance(model, flax.linen.Module):
      raise UserError(f"model= must be a flax.linen.Module, got a {type(model).__name__}.")
    config.model.name = f"object:{type(model).__name__}"
  if dataset is not None:
    arrays = dataset_fields(dataset) if isinstance(dataset, Dataset) else dataset
    if not isinstance(arrays, dict):
      raise UserError(f"dataset= must be a dfl.data.Dataset or a dict of arrays, got a "
                      f"{type(dataset).__name__}.")
    dataset = as_dataset(arrays, "dataset=")
    config.data.name = f"object:{arrays.get('name') or 'dataset'}"
  return config, dataset


def _open_run(exp: Experiment, workdir: str) -> Run:
  """The run's checkpoints (after checkpoint.fresh discarded old outputs) and its progress, from
  its newest checkpoint or round 0; config.json written. Closes the checkpoints on failure."""
  config = exp.config
  main = is_main_process()  # multi-host: every process computes, only process 0 writes
  if config.checkpoint.fresh and main:
    checkpoint.discard_run(workdir, OUTPUTS)
  checkpoints = checkpoint.RunCheckpoints(workdir, max_to_keep=config.checkpoint.max_to_keep,
                                          async_save=config.checkpoint.async_save)
  try:
    progress = start_or_resume(exp, workdir, checkpoints)
    if main:
      with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
      logging.info("dfl: %s on %s, %d nodes on %d device(s), %s/%s, %d params per node",
                   config.algorithm.name, config.topology.name, config.num_nodes,
                   exp.placement.mesh.size, config.data.name, config.model.name,
                   exp.model_bytes // 4)
  except BaseException:
    checkpoints.close(after_error=True)
    raise
  return Run(exp, workdir, checkpoints, progress, run_meta(config))


def _finish_run(run: Run, elapsed: float) -> dict:
  """summary.json of a finished run, and its one line on stdout."""
  config, workdir = run.exp.config, run.workdir
  rounds, records = config.train.rounds, run.progress.records
  summary = make_summary(records, rounds, run.progress.wall_offset + elapsed)
  merge_start = _merge_start(run.exp)
  if merge_start is not None:
    summary.update(_before_merge(records, merge_start))
  if not is_main_process():
    return summary
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  if merge_start is not None and "before_merge_test_accuracy" in summary:
    print(f"before the {config.topology.schedule} (round {merge_start}): mean local model "
          f"{summary['before_merge_test_accuracy_local_mean']:.4f}, their average "
          f"{summary['before_merge_test_accuracy']:.4f}", flush=True)
  if "final_test_accuracy" in summary:
    what = (f"final test accuracy of the node-averaged model: "
            f"{summary['final_test_accuracy']:.4f} (mean local model "
            f"{summary['final_test_accuracy_local_mean']:.4f})")
  else:
    what = (f"final test loss of the node-averaged model: {summary['final_test_loss']:.6g} "
            f"(mean local model {summary['final_test_loss_local_mean']:.6g})")
  if "final_distance_to_optimum" in summary:
    what += f", ||x̄ - x*||^2 = {summary['final_distance_to_optimum']:.4g}"
  print(f"{what} after {rounds} "
        f"rounds, {summary['wall_seconds']:.1f} s; outputs in {workdir}", flush=True)
  return summary


def _close(runs: list[Run], after_error: bool) -> None:
  for run in runs:
    run.checkpoints.close(after_error=after_error)


def _train_and_evaluate(config, workdir: str, model=None, dataset=None) -> dict:
  exp = build_experiment(config, model=model, dataset=dataset)
  runs = [_open_run(exp, workdir)]
  try:
    with checkpoint.PreemptionGuard() as guard:
      elapsed = _run_batch(runs, guard)
  except BaseException:
    _close(runs, after_error=True)  # a failed save in flight must not hide this error
    raise
  _close(runs, after_error=False)
  return _finish_run(runs[0], elapsed)


def train_and_evaluate_batch(configs: Sequence, workdirs: Sequence[str], *,
                             max_batch: int = 0) -> list:
  """Runs several configs, as few compiled programs as their structure allows (dfl/batching.py):
  each run writes its workdir exactly as `train_and_evaluate(config, workdir)` would and
  resumes from its own checkpoints. Runs that cannot share a program (another algorithm, a
  changed shape, a resume from another round) go to separate batches, run one after another;
  `max_batch` > 0 caps a batch at that many runs (0: as many as fit, `batching.max_batch_runs`).

  One failing run never takes the others down: a run that diverges stops alone, one whose
  build or batch fails is reported, the others go on. Returns, per run, its summary dict or the
  exception that ended it. SIGTERM / SIGINT stops all runs after a checkpoint (Preempted).
  """
  if len(configs) != len(workdirs) or not configs:
    raise UserError(f"Need one workdir per config, got {len(configs)} configs and "
                    f"{len(workdirs)} workdirs.")
  if len({os.path.abspath(w) for w in workdirs}) != len(workdirs):
    raise UserError(f"Need a distinct workdir per run, got workdirs={list(workdirs)}.")
  for config in configs:
    validate_config(config)
  for workdir in workdirs:
    os.makedirs(workdir, exist_ok=True)
  outcomes: list = [None] * len(configs)
  with workdir_lock.hold(workdirs):
    exps = {}
    for i, config in enumerate(configs):
      try:
        exps[i] = build_experiment(config)
      except (UserError, ValueError, OSError) as e:
        outcomes[i] = e
        print(f"run {workdirs[i]} not started: {e}", file=sys.stderr, flush=True)
    for group in _batches(exps, workdirs, max_batch):
      for i, result in zip(group, _run_group([exps[i] for i in group],
                                             [workdirs[i] for i in group])):
        outcomes[i] = result
  return outcomes


def _batches(exps: dict, workdirs: Sequence[str], max_batch: int) -> list[list[int]]:
  """Run indices in batches: runs that share a program (`compatible_groups`), at most
  `max_batch` (or what fits in memory) per batch."""
  order = sorted(exps)
  groups = []
  for group in compatible_groups([exps[i] for i in order]):
    members = [order[j] for j in group]
    cap = max_batch or max_batch_runs(exps[members[0]])
    groups += [members[k:k + cap] for k in range(0, len(members), cap)]
  return groups


def _run_group(exps: list[Experiment], workdirs: list[str]) -> list:
  """Runs that share a program, in sub-batches of runs resumed at the same round; returns each
  run's summary or exception. Preempted (SIGTERM / SIGINT) propagates."""
  runs, results = [], {}
  for k, (exp, workdir) in enumerate(zip(exps, workdirs)):
    try:
      runs.append((k, _open_run(exp, workdir)))
    except (UserError, ValueError, OSError, checkpoint.CheckpointError) as e:
      results[k] = e
      print(f"run {workdir} not started: {e}", file=sys.stderr, flush=True)
  by_round: dict[int, list] = {}
  for k, run in runs:
    by_round.setdefault(run.progress.round, []).append((k, run))
  for members in by_round.values():
    batch = [run for _, run in members]
    try:
      with checkpoint.PreemptionGuard() as guard:
        elapsed = _run_batch(batch, guard)
    except checkpoint.Preempted:
      _close([run for _, run in runs], after_error=True)
      raise
    except Exception as e:  # this batch's runs fail together; other batches go on
      _close(batch, after_error=True)
      for k, run in members:
        results[k] = e
      print(f"batch of {len(batch)} run(s) failed: {e}", file=sys.stderr, flush=True)
      continue
    _close(batch, after_error=False)
    for k, run in members:
      results[k] = run.failure if run.failure is not None else _finish_run(run, elapsed)
  return [results[k] for k in range(len(exps))]
