"""Runs one experiment: python -m launch.main --config CONFIG.py --workdir DIR [--config.x=y ...].

With --seeds=0,1,2 the seeds run together in one compiled program (dfl/batched.py), each into
its own workdir: --workdir must then contain '{seed}', e.g. --workdir='runs/x/seed={seed}'.
"""
import shlex
import sys

from absl import app, flags
from ml_collections import config_flags

from dfl.batched import train_and_evaluate_seeds
from dfl.checkpoint import Preempted
from dfl.train import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config.json, metrics, checkpoints.")
_SEEDS = flags.DEFINE_list("seeds", None, "Seeds to run batched in one program (overrides "
                           "config.seed); --workdir must contain {seed}.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _SEEDS.value and "{seed}" not in _WORKDIR.value:
    raise app.UsageError(f"With --seeds, --workdir must contain {{seed}}, got {_WORKDIR.value!r}.")
  try:
    if _SEEDS.value:
      seeds = [int(s) for s in _SEEDS.value]
      train_and_evaluate_seeds(_CONFIG.value, seeds, [_WORKDIR.value.format(seed=s) for s in seeds])
    else:
      train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except Preempted as e:  # exit code 128 + signal number: 143 for SIGTERM, 130 for SIGINT
    print(f"{e}\nResume: python -m launch.main {shlex.join(sys.argv[1:])}", file=sys.stderr)
    sys.exit(e.exit_code)


if __name__ == "__main__":
  app.run(main)
