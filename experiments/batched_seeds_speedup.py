"""Speed of batched seeds: S seeds in one vmapped program vs S separate runs, side by side.

    python -m experiments.batched_seeds_speedup --seeds=4 --rounds=50 --num_nodes=16

Both variants are the real command lines, each in a fresh process (no shared compilation
cache): S times `python -m launch.main --config.seed=s`, then once `python -m launch.main
--seeds=0,...,S-1`. Reports end-to-end wall time (process start, data, compilation, training,
evaluation) and the training-loop time of the runs' summaries (compilation of the first chunk
included), and checks that both give the same final accuracies. Any further --config.x=y flag
is passed to every run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_SEEDS = flags.DEFINE_integer("seeds", 4, "Number of seeds S.")
_ROUNDS = flags.DEFINE_integer("rounds", 50, "Rounds per run.")
_NODES = flags.DEFINE_integer("num_nodes", 16, "Nodes per run.")
_CONFIG = flags.DEFINE_string("config", "experiments/configs/default.py", "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where runs go (default: a temporary directory).")


def _run(args: list[str], env: dict) -> float:
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "launch.main", *args], check=True, env=env,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return time.perf_counter() - start


def _summary(workdir: str) -> dict:
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def main(argv):
  extra = [a for a in argv[1:] if a.startswith("--config.")]
  root = _WORKDIR.value or tempfile.mkdtemp(prefix="batched_speedup_")
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  common = [f"--config={_CONFIG.value}", f"--config.train.rounds={_ROUNDS.value}",
            f"--config.num_nodes={_NODES.value}", *extra]
  seeds = list(range(_SEEDS.value))

  separate_wall = sum(_run([*common, f"--workdir={root}/separate/seed={s}", f"--config.seed={s}"], env)
                      for s in seeds)
  separate = [_summary(f"{root}/separate/seed={s}") for s in seeds]
  batched_wall = _run([*common, f"--workdir={root}/batched/seed={{seed}}",
                       f"--seeds={','.join(map(str, seeds))}"], env)
  batched = [_summary(f"{root}/batched/seed={s}") for s in seeds]

  separate_loop = sum(s["wall_seconds"] for s in separate)
  batched_loop = batched[0]["wall_seconds"]
  print(f"{len(seeds)} seeds x {_ROUNDS.value} rounds, {_NODES.value} nodes, {' '.join(extra) or 'default config'}")
  print("| | separate runs | batched | speedup |\n|---|---|---|---|")
  print(f"| end to end (s) | {separate_wall:.1f} | {batched_wall:.1f} | {separate_wall / batched_wall:.2f}x |")
  print(f"| training loop (s) | {separate_loop:.1f} | {batched_loop:.1f} | {separate_loop / batched_loop:.2f}x |")
  diff = max(abs(a["final_test_accuracy"] - b["final_test_accuracy"]) for a, b in zip(separate, batched))
  print(f"final accuracies {[round(s['final_test_accuracy'], 4) for s in batched]}; "
        f"largest difference batched vs separate: {diff:.2e}")


def _parse_flags(argv: list[str]) -> list[str]:
  """Own flags to absl; --config.x=y flags left in argv for the runs."""
  extra = [a for a in argv[1:] if a.startswith("--config.")]
  return flags.FLAGS([a for a in argv if a not in extra]) + extra


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
