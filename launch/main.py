"""Runs one experiment: python -m launch.main --config CONFIG.py --workdir DIR [--config.x=y ...].

With --seeds=0,1,2 the seeds run together in one compiled program (dfl/batching.py), each into
its own workdir: --workdir must then contain '{seed}', e.g. --workdir='runs/x/seed={seed}'.
With --runs=FILE.json (what launch.sweep writes for a batch) the runs listed there, each a
workdir and its overrides ([{"workdir": "...", "overrides": [["algorithm.lr", "0.1"], ...]}]),
share as few compiled programs as their structure allows; --batch caps a batch (0: what fits).
--print_config lists every config field with its value and comment, and runs nothing.
User errors print one line and exit with status 2 (--debug shows the traceback); a run stopped
by SIGTERM / SIGINT exits with 143 / 130 after saving a checkpoint.
"""
import shlex
import sys

from absl import flags
from ml_collections import config_flags

import copy
import json

from dfl.checkpoint import Preempted
from dfl.errors import UserError
from dfl.train import train_and_evaluate, train_and_evaluate_batch
from launch import cli, fields, sweep_spec

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config.json, metrics, checkpoints.")
_SEEDS = flags.DEFINE_list("seeds", None, "Seeds to run batched in one program (overrides "
                           "config.seed); --workdir must contain {seed}.")
_RUNS = flags.DEFINE_string("runs", None, "A JSON file listing runs (workdir and overrides) to run "
                            "as batches; replaces --workdir.")
_BATCH = flags.DEFINE_integer("batch", 0, "With --runs / --seeds: at most this many runs per "
                              "compiled program (0: as many as fit in memory).")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print every config field with its value, "
                                  "default and comment, then exit.")
flags.mark_flag_as_required("config")


def main(argv):
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments: {argv[1:]}")
  if _PRINT_CONFIG.value:
    module = cli.load_config_module(flags.FLAGS["config"].config_filename)
    print(fields.describe(_CONFIG.value, module))
    return
  if _RUNS.value:
    configs, workdirs = runs_from_file(_CONFIG.value, _RUNS.value)
  elif not _WORKDIR.value:
    raise UserError("--workdir is required: the directory for the run's outputs and checkpoints.")
  elif _SEEDS.value:
    if "{seed}" not in _WORKDIR.value:
      raise UserError(f"With --seeds, --workdir must contain {{seed}}, got {_WORKDIR.value!r}.")
    try:
      seeds = [int(s) for s in _SEEDS.value]
    except ValueError:
      raise UserError(f"--seeds must be integers, got {','.join(_SEEDS.value)!r}.") from None
    if len(set(seeds)) != len(seeds):
      raise UserError(f"--seeds must be distinct, got {','.join(_SEEDS.value)!r}.")
    configs = [with_seed(_CONFIG.value, s) for s in seeds]
    workdirs = [_WORKDIR.value.format(seed=s) for s in seeds]
  try:
    if _RUNS.value or _SEEDS.value:
      outcomes = train_and_evaluate_batch(configs, workdirs, max_batch=_BATCH.value)
      failed = [(w, o) for w, o in zip(workdirs, outcomes) if isinstance(o, BaseException)]
      if failed:
        for workdir, error in failed:
          print(f"FAILED {workdir}: {error}", file=sys.stderr)
        print(f"{len(failed)} of {len(workdirs)} runs failed; the others finished.",
              file=sys.stderr)
        sys.exit(1)
    else:
      train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except Preempted as e:  # exit code 128 + signal number: 143 for SIGTERM, 130 for SIGINT
    print(f"{e}\nResume: python -m launch.main {shlex.join(sys.argv[1:])}", file=sys.stderr)
    sys.exit(e.exit_code)


def with_seed(config, seed: int):
  config = copy.deepcopy(config)
  config.seed = seed
  return config


def runs_from_file(config, path: str):
  """(configs, workdirs) of a --runs file: the base config with each run's overrides."""
  try:
    with open(path) as f:
      listed = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"--runs={path!r} could not be read as JSON: {e}") from None
  if not (isinstance(listed, list) and listed and
          all(isinstance(r, dict) and "workdir" in r for r in listed)):
    raise UserError(f"--runs={path!r} must list runs as [{{\"workdir\": ..., \"overrides\": "
                    "[[field, value], ...]}, ...].")
  configs = [sweep_spec.with_overrides(config, tuple(tuple(o) for o in r.get("overrides", ())))
             for r in listed]
  return configs, [r["workdir"] for r in listed]


if __name__ == "__main__":
  cli.run(main)
