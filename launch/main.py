"""Runs one experiment: python -m launch.main --config CONFIG.py --workdir DIR [--config.x=y ...].

With --seeds=0,1,2 the seeds run together in one compiled program (dfl/batched.py), each into
its own workdir: --workdir must then contain '{seed}', e.g. --workdir='runs/x/seed={seed}'.
--print_config lists every config field with its value and comment, and runs nothing.
User errors print one line and exit with status 2 (--debug shows the traceback); a run stopped
by SIGTERM / SIGINT exits with 143 / 130 after saving a checkpoint.
"""
import shlex
import sys

from absl import flags
from ml_collections import config_flags

from dfl.batched import train_and_evaluate_seeds
from dfl.checkpoint import Preempted
from dfl.errors import UserError
from dfl.train import train_and_evaluate
from launch import cli, fields

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config.json, metrics, checkpoints.")
_SEEDS = flags.DEFINE_list("seeds", None, "Seeds to run batched in one program (overrides "
                           "config.seed); --workdir must contain {seed}.")
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
  if not _WORKDIR.value:
    raise UserError("--workdir is required: the directory for the run's outputs and checkpoints.")
  if _SEEDS.value and "{seed}" not in _WORKDIR.value:
    raise UserError(f"With --seeds, --workdir must contain {{seed}}, got {_WORKDIR.value!r}.")
  try:
    if _SEEDS.value:
      try:
        seeds = [int(s) for s in _SEEDS.value]
      except ValueError:
        raise UserError(f"--seeds must be integers, got {','.join(_SEEDS.value)!r}.") from None
      train_and_evaluate_seeds(_CONFIG.value, seeds, [_WORKDIR.value.format(seed=s) for s in seeds])
    else:
      train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except Preempted as e:  # exit code 128 + signal number: 143 for SIGTERM, 130 for SIGINT
    print(f"{e}\nResume: python -m launch.main {shlex.join(sys.argv[1:])}", file=sys.stderr)
    sys.exit(e.exit_code)


if __name__ == "__main__":
  cli.run(main)
