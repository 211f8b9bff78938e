"""Runs a sweep: one `launch.main` run per combination of config overrides, each in its own workdir.

    python -m launch.sweep --config experiments/configs/default.py --root runs/grid \
        --sweep topology.name=ring,torus,complete --sweep algorithm.name=dfedavg,dpsgd \
        --seeds 0,1,2 --parallel 2 --config.train.rounds=100

Axes come from the config file's get_sweep() (if any) and from --sweep (cartesian) / --zip (all
--zip flags zipped into one axis) / --seeds; see launch/sweep_spec.py. A field of the
`algorithm` or `variance_correction` section that a run does not read is refused as launch.main
refuses it, with one rule for sweeps (sweep_spec.unused_fields): a swept field must be read by
every run it is set in; a --config.FIELD shared by all runs must be read by at least one, and is
left out of the commands of the runs that do not read it (a shared --config.algorithm.rho over
algorithm.name=dfedavg,dfedsam reaches dfedsam only). Every run is the command
`python -m launch.main --config ... --workdir ROOT/NAME <--config flags> <its overrides>` in a
subprocess of its own, so a crash in one cannot take the others down. Run again to finish a
sweep: runs with a summary.json are skipped, unfinished ones are started again in the same
workdir (and resume there from their last checkpoint), failed ones are listed at the end with
the tail of their log (ROOT/NAME/run.log). A run whose workdir lock is held by a live process
(another sweep, or the same run started by hand or by a scheduler; dfl/workdir_lock.py) is not
started again but reported as "running elsewhere", with its holder.

For a cluster: `--emit=commands` prints the pending runs' commands, one per line;
`--emit=slurm` writes ROOT/sweep.slurm, a SLURM job array with one task per pending run.
Then collect the results: `python -m launch.report ROOT`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from absl import flags
from ml_collections import config_flags

from dfl import workdir_lock
from dfl.algorithms import registry as algorithm_registry
from dfl.config_checks import validate_config
from dfl.errors import UserError
from launch import cli, sweep_spec

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_ROOT = flags.DEFINE_string("root", None, "Directory holding one workdir per run.")
_SWEEP = flags.DEFINE_multi_string("sweep", [], "FIELD=V1,V2,...: a cartesian axis (repeatable).")
_ZIP = flags.DEFINE_multi_string("zip", [], "FIELD=V1,V2,...: all --zip fields form one zipped axis.")
_SEEDS = flags.DEFINE_string("seeds", None, "Comma-separated seeds, e.g. 0,1,2 (the innermost axis).")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Runs at a time on this machine.")
_EMIT = flags.DEFINE_enum("emit", None, ["commands", "slurm"],
                          "Do not run: print the pending commands, or write ROOT/sweep.slurm.")
_SBATCH = flags.DEFINE_multi_string("sbatch", [], "Extra #SBATCH option for --emit=slurm, "
                                    "e.g. --sbatch=--gres=gpu:1 --sbatch=--time=4:00:00.")
_BATCH = flags.DEFINE_string("batch", "auto", "auto: runs that differ only in batchable values "
                              "(hyperparameters, seeds, data partitions, graphs) share one compiled "
                              "program, as many per batch as fit in memory; K: at most K runs per "
                              "batch; none: one process per run (dfl/batching.py).")
_SHARE_CACHE = flags.DEFINE_bool("share_compilation_cache", True,
                                  "Runs share a persistent XLA compilation cache in ROOT/.jax_cache "
                                  "(unless JAX_COMPILATION_CACHE_DIR is set): runs that differ only in "
                                  "seed or graph (same N, dense W) compile once.")
flags.mark_flags_as_required(["config", "root"])

CACHE_DIR = ".jax_cache"
LOG_NAME = "run.log"
RECORD_NAME = "sweep.json"  # the root's config file and --config flags (to refuse mixing sweeps)
TAIL_LINES = 6


@dataclasses.dataclass(frozen=True)
class Run:
  """One launch.main process: a single run, or a batch of runs (--batch) sharing one program."""
  name: str
  workdir: str  # holds run.log and sweep_run.json
  command: tuple[str, ...]
  outputs: tuple[str, ...]  # the run workdirs; finished when each has a summary.json
  overrides: tuple = ()  # a single run: its (field, value) overrides of the base config
  flags: tuple = ()  # a single run: the sweep's shared --config flags that it reads
  runs_json: str = ""  # a batch: the runs.json its command reads (written before it starts)


@dataclasses.dataclass
class Outcome:
  run: Run
  # done | failed | interrupted (stopped by the sweep; resumes) | not started | running elsewhere
  # (its workdir is locked by a live process outside this sweep)
  status: str
  seconds: float = 0.0
  returncode: int | None = None
  tail: str = ""


def config_override_tokens(argv: list[str]) -> list[str]:
  """The --config.FIELD flags exactly as typed, to hand on to every run."""
  tokens, i = [], 0
  while i < len(argv):
    arg = argv[i]
    if re.match(r"^--?(no)?config\.", arg):
      tokens.append(arg)
      if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
        tokens.append(argv[i + 1])
        i += 1
    i += 1
  return tokens


def flag_groups(base_flags: list[str]) -> list[tuple[str, tuple[str, ...]]]:
  """The tokens of `config_override_tokens` grouped per flag, with the dotted field each sets:
  [("algorithm.rho", ("--config.algorithm.rho=0.1",)), ("train.rounds", ("--config.train.rounds",
  "2")), ...]."""
  groups, i = [], 0
  while i < len(base_flags):
    token = base_flags[i]
    field = re.sub(r"^--?(no)?config\.", "", token).split("=", 1)[0]
    if "=" not in token and i + 1 < len(base_flags) and not base_flags[i + 1].startswith("-"):
      groups.append((field, (token, base_flags[i + 1])))
      i += 2
    else:
      groups.append((field, (token,)))
      i += 1
  return groups


def load_sweep_axes(config_arg: str) -> list[sweep_spec.Axis]:
  """The axes of the config file's get_sweep() ('path.py' or 'path.py:arg'); [] if it has none."""
  module, arg = cli.load_config_module(config_arg), config_arg.partition(":")[2]
  if not hasattr(module, "get_sweep"):
    return []
  return sweep_spec.axes_from_config(module.get_sweep(arg) if arg else module.get_sweep())


def plan_runs(config, config_arg: str, root: str, base_flags: list[str], sweep_flags: list[str],
              zip_flags: list[str], seeds: str | None) -> list[Run]:
  """Every run of the sweep with its workdir and launch.main command."""
  cli_axes = [dict([sweep_spec.parse_axis_flag(f)]) for f in sweep_flags]
  if zip_flags:
    cli_axes.append(sweep_spec.zipped_axis(zip_flags))
  if seeds:
    cli_axes.append({"seed": sweep_spec.split_values(seeds)})
  axes = sweep_spec.merge_axes(load_sweep_axes(config_arg), cli_axes)
  groups = flag_groups(base_flags)
  fixed = [field for field, _ in groups]
  sweep_spec.check_axes(axes, config, fixed)
  expanded = sweep_spec.expand(axes)
  # Before any run starts: every swept field read by its runs, every shared one by some run.
  dropped = sweep_spec.unused_fields(config, expanded, fixed,
                                     algorithm_registry.unused_override_message)
  file_config = cli.config_from_arg(config_arg) if any(dropped) else None
  resets = [{f: _field(file_config, f) for f in unused} for unused in dropped]
  sweep_spec.check_runs(config, expanded, validate_config, resets)
  runs = []
  for overrides, unused in zip(expanded, dropped):
    workdir = run_workdir(root, overrides)
    shared = [t for field, tokens in groups if field not in unused for t in tokens]
    command = (sys.executable, "-m", "launch.main", f"--config={config_arg}", f"--workdir={workdir}",
               *shared, *(f"--config.{field}={value}" for field, value in overrides))
    runs.append(Run(os.path.relpath(workdir, root), workdir, command, (workdir,), overrides,
                    tuple(shared)))
  if len({r.workdir for r in runs}) != len(runs):
    raise ValueError("Two runs of the sweep map to one workdir; are some values repeated?")
  return runs


def _field(config, dotted: str):
  for part in dotted.split("."):
    config = config[part]
  return config


def run_workdir(root: str, overrides: sweep_spec.Overrides) -> str:
  """ROOT/<setting name>/seed=<seed> when the seed is swept, else ROOT/<setting name>."""
  setting = tuple((f, v) for f, v in overrides if f != "seed")
  seed = [v for f, v in overrides if f == "seed"]
  path = os.path.join(root, sweep_spec.run_name(setting))
  return os.path.join(path, sweep_spec.run_name((("seed", seed[0]),))) if seed else path


BATCH_DIR = "_batches"  # ROOT/_batches/NAME holds a batch's runs.json and run.log


def batch_size_flag(text: str) -> int | None:
  """--batch: None for 'none', 0 for 'auto' (what fits), else K >= 1."""
  if text == "none":
    return None
  if text == "auto":
    return 0
  try:
    k = int(text)
  except ValueError:
    k = 0
  if k < 1:
    raise ValueError(f"--batch must be auto, none or a number of runs >= 1, got {text!r}.")
  return k


def batch_runs(config, config_arg: str, runs: list[Run], root: str, cap: int) -> list[Run]:
  """The runs as batches: those whose configs differ only in batchable values
  (dfl.algorithms.registry.structural_key) form one `launch.main --runs` process, at most `cap` runs each
  (0: no cap here; the process sizes its batches to the memory). A batch of one stays a plain
  run. A batch is named after its first run, so a re-run of the sweep finds the same folder."""
  groups: dict[str, list[Run]] = {}
  for run in runs:
    key = (algorithm_registry.structural_key(sweep_spec.with_overrides(config, run.overrides)),
           run.flags)
    groups.setdefault(key, []).append(run)
  batched = []
  for members in groups.values():
    size = cap or len(members)
    for k in range(0, len(members), size):
      part = members[k:k + size]
      if len(part) == 1:
        batched.append(part[0])
        continue
      folder = os.path.join(root, BATCH_DIR, part[0].name.replace(os.sep, "__"))
      listed = [{"workdir": r.workdir, "overrides": [list(o) for o in r.overrides]} for r in part]
      command = (sys.executable, "-m", "launch.main", f"--config={config_arg}",
                 f"--runs={os.path.join(folder, 'runs.json')}", *part[0].flags,
                 *((f"--batch={cap}",) if cap else ()))
      batched.append(Run(f"{part[0].name} +{len(part) - 1} runs", folder, command,
                         tuple(r.workdir for r in part), runs_json=json.dumps(listed, indent=1)))
  return batched


def write_runs_file(run: Run) -> None:
  """A batch's runs.json, which its command reads."""
  if run.runs_json:
    os.makedirs(run.workdir, exist_ok=True)
    with open(os.path.join(run.workdir, "runs.json"), "w") as f:
      f.write(run.runs_json)


def is_finished(run: Run) -> bool:
  return all(os.path.exists(os.path.join(w, "summary.json")) for w in run.outputs)


def check_same_base(root: str, config_arg: str, base_flags: list[str], record: bool) -> None:
  """Refuses to add runs with other base settings to a root (a finished run would be skipped
  although it no longer matches); records the base settings of a new root."""
  path = os.path.join(root, RECORD_NAME)
  base = {"config": config_arg, "flags": base_flags}
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    if previous != base:
      raise ValueError(f"{root} holds a sweep of --config={previous['config']} with "
                       f"{previous['flags']}, not --config={config_arg} with {base_flags}. Use a "
                       "new --root, or sweep the differing field as an axis.")
  elif record:
    os.makedirs(root, exist_ok=True)
    with open(path, "w") as f:
      json.dump(base, f, indent=2)


def _tail(log_path: str, start: int) -> str:
  with open(log_path, errors="replace") as f:
    f.seek(start)
    text = f.read()
  lines = [l for l in re.split(r"[\r\n]", text) if l.strip()]  # \r: progress-bar redraws
  return "\n".join(lines[-TAIL_LINES:])


class Executor:
  """Runs launch.main subprocesses, `parallel` at a time. Ctrl-C or a SIGTERM to the sweep stops
  them all (SIGTERM, so each run checkpoints on the way out), waits for them, and reports them
  as interrupted: their workdirs resume on the next call."""

  def __init__(self, parallel: int, compilation_cache: str | None = None):
    self.parallel = parallel
    self.stopping = threading.Event()
    self._procs: set[subprocess.Popen] = set()
    self._lock = threading.Lock()
    self.env = dict(os.environ)
    if compilation_cache:
      self.env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.abspath(compilation_cache))
    if parallel > 1:  # runs sharing one accelerator must not each grab most of its memory
      self.env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

  def run_one(self, run: Run) -> Outcome:
    if self.stopping.is_set():
      return Outcome(run, "not started")
    elsewhere = _running_elsewhere(run)
    if elsewhere:  # before writing anything there (its run.log included)
      return Outcome(run, "running elsewhere", tail=elsewhere)
    os.makedirs(run.workdir, exist_ok=True)
    write_runs_file(run)
    log_path = os.path.join(run.workdir, LOG_NAME)
    start = time.perf_counter()
    with open(log_path, "a") as log:
      log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(run.command)}\n")
      log.flush()
      offset = log.tell()
      proc = subprocess.Popen(run.command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                              start_new_session=True)  # Ctrl-C reaches the sweep, which stops it
      with self._lock:
        self._procs.add(proc)
      returncode = proc.wait()
      with self._lock:
        self._procs.discard(proc)
    seconds = time.perf_counter() - start
    # A run stopped after writing its summary (a late Ctrl-C) is finished, not interrupted.
    if is_finished(run) and (returncode == 0 or self.stopping.is_set()):
      return Outcome(run, "done", seconds, returncode)
    if self.stopping.is_set():  # stopped by us; exit 143 after its checkpoint
      return Outcome(run, "interrupted", seconds, returncode)
    elsewhere = _running_elsewhere(run)
    if elsewhere:  # another process took the lock between the check above and the start
      return Outcome(run, "running elsewhere", seconds, returncode, elsewhere)
    return Outcome(run, "failed", seconds, returncode, _tail(log_path, offset))

  def stop(self) -> None:
    self.stopping.set()
    with self._lock:
      for proc in self._procs:
        proc.send_signal(signal.SIGTERM)

  def run_all(self, runs: list[Run], report=print) -> list[Outcome]:
    """Outcomes of all runs; `self.stopping` is set if the sweep was interrupted."""
    outcomes = []

    def collect(outcome: Outcome) -> None:
      outcomes.append(outcome)
      if outcome.status != "not started":
        report(_progress_line(len(outcomes), len(runs), outcome))

    with ThreadPoolExecutor(max_workers=self.parallel) as pool:
      futures = [pool.submit(self.run_one, run) for run in runs]
      try:
        for future in as_completed(futures):
          collect(future.result())
      except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (see main)
        report("Interrupted: stopping the running runs (each checkpoints first) ...")
        self.stop()
        for future in futures:  # the stopped runs exit within a checkpoint's time
          if future.result() not in outcomes:
            collect(future.result())
    return outcomes


def _running_elsewhere(run: Run) -> str:
  """'' if no live process outside this sweep holds the lock of one of the run's workdirs, else
  who holds it."""
  held = []
  for workdir in run.outputs:
    holder = workdir_lock.locked_by_other(workdir)
    if holder is not None:
      held.append(f"{workdir} locked by pid {holder.get('pid', '?')} on "
                  f"{holder.get('host', '?')} (started {holder.get('started', '?')})")
  return "; ".join(held)


def _progress_line(i: int, n: int, outcome: Outcome) -> str:
  line = f"[{i}/{n}] {outcome.status:<6} {outcome.seconds:7.1f}s  {outcome.run.name}"
  if outcome.status == "done":
    values, key = [], "final_test_accuracy"
    for workdir in outcome.run.outputs:
      with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
      key = next(k for k in ("final_test_accuracy", "final_distance_to_optimum",
                             "final_test_loss") if k in summary)  # regressions: no accuracy
      values.append(summary[key])
    mean = sum(values) / len(values)
    line += (f"  final accuracy {mean:.4f}" if key == "final_test_accuracy" else
             f"  final {key[len('final_'):].replace('_', ' ')} {mean:.4g}")
  elif outcome.status == "running elsewhere":
    line += f"  ({outcome.tail})"
  else:
    line += f"  (exit {outcome.returncode}; log: {os.path.join(outcome.run.workdir, LOG_NAME)})"
  return line


def slurm_script(runs: list[Run], root: str, parallel: int, sbatch: list[str],
                 compilation_cache: str | None = None) -> str:
  """A SLURM job array running one pending run per task, from this checkout."""
  lines = ["#!/bin/bash", f"#SBATCH --job-name=dfl-{os.path.basename(os.path.abspath(root))}",
           f"#SBATCH --array=0-{len(runs) - 1}" + (f"%{parallel}" if parallel > 1 else ""),
           f"#SBATCH --output={os.path.abspath(os.path.join(root, 'slurm'))}/%A_%a.log",
           *(f"#SBATCH {opt}" for opt in sbatch), "set -euo pipefail",
           f"cd {shlex.quote(os.getcwd())}"]
  if compilation_cache:
    lines.append("export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-"
                 f"{shlex.quote(os.path.abspath(compilation_cache))}}}")
  lines.append("COMMANDS=(")
  lines += [f"  {shlex.quote(shlex.join(run.command))}" for run in runs]
  lines += [")", 'eval "${COMMANDS[$SLURM_ARRAY_TASK_ID]}"', ""]
  return "\n".join(lines)


def summarize(outcomes: list[Outcome], skipped: int, report=print) -> None:
  """Counts runs, not processes: a batch that failed may have finished most of its runs."""
  finished = lambda o: sum(os.path.exists(os.path.join(w, "summary.json")) for w in o.run.outputs)
  count = lambda s: sum(len(o.run.outputs) for o in outcomes if o.status == s)
  done = count("done") + sum(finished(o) for o in outcomes if o.status == "failed")
  failed = sum(len(o.run.outputs) - finished(o) for o in outcomes if o.status == "failed")
  report(f"\n{done} done, {skipped} already finished (skipped), {failed} failed"
         + (f", {count('interrupted')} interrupted" if count("interrupted") else "")
         + (f", {count('not started')} not started" if count("not started") else "")
         + (f", {count('running elsewhere')} running elsewhere (not started again; run the sweep "
            "again once they finish)" if count("running elsewhere") else ""))
  for o in outcomes:
    if o.status == "failed":
      report(f"\nFAILED {o.run.name} (exit {o.returncode}), log {os.path.join(o.run.workdir, LOG_NAME)}:")
      report("  " + o.tail.replace("\n", "\n  "))


def main(argv):
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments: {argv[1:]}")
  if _PARALLEL.value < 1:
    raise UserError(f"--parallel must be >= 1, got {_PARALLEL.value}.")
  root = _ROOT.value
  config_arg = config_flags.get_config_filename(flags.FLAGS["config"])
  base_flags = config_override_tokens(sys.argv[1:])
  try:
    runs = plan_runs(_CONFIG.value, config_arg, root, base_flags, _SWEEP.value, _ZIP.value,
                     _SEEDS.value)
    check_same_base(root, config_arg, base_flags, record=_EMIT.value != "commands")
    pending = [r for r in runs if not is_finished(r)]
    cap = batch_size_flag(_BATCH.value)
    if cap is not None:
      pending = batch_runs(_CONFIG.value, config_arg, pending, root, cap)
  except ValueError as e:  # a bad sweep: say what is wrong, no traceback
    raise UserError(f"launch.sweep: {e}") from None
  cache = os.path.join(root, CACHE_DIR) if _SHARE_CACHE.value else None
  if _EMIT.value:
    for run in pending:
      write_runs_file(run)
  if _EMIT.value == "commands":
    print("\n".join(shlex.join(r.command) for r in pending))
    return
  if _EMIT.value == "slurm":
    if not pending:
      print(f"All {len(runs)} runs under {root} are finished; nothing to submit.")
      return
    os.makedirs(os.path.join(root, "slurm"), exist_ok=True)
    path = os.path.join(root, "sweep.slurm")
    with open(path, "w") as f:
      f.write(slurm_script(pending, root, _PARALLEL.value, _SBATCH.value, cache))
    print(f"Wrote {path}: {len(pending)} array tasks. Submit with: sbatch {path}")
    return
  total, todo = (sum(len(r.outputs) for r in rs) for rs in (runs, pending))
  print(f"Sweep: {total} runs under {root}, {total - todo} already finished; running {todo}"
        + (f" in {len(pending)} processes" if len(pending) != todo else "")
        + f", {_PARALLEL.value} at a time.", flush=True)
  executor = Executor(_PARALLEL.value, cache)
  stop_signal = []

  def on_sigterm(signum, frame):  # a scheduler stopping the sweep: stop the runs as Ctrl-C does
    stop_signal.append(signum)
    raise KeyboardInterrupt
  signal.signal(signal.SIGTERM, on_sigterm)
  outcomes = executor.run_all(pending, report=lambda s: print(s, flush=True))
  summarize(outcomes, total - todo)
  if executor.stopping.is_set():
    print("\nInterrupted; run the same command again to resume the unfinished runs.")
    sys.exit(128 + (stop_signal[0] if stop_signal else signal.SIGINT))
  print(f"\nResults: python -m launch.report {root}")
  if any(o.status != "done" for o in outcomes):
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main, check_overrides=False)  # plan_runs checks every run
