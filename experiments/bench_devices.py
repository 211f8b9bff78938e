"""Node-steps per second against the number of devices the node axis is sharded over.

    python -m experiments.bench_devices --devices 1,2,4,8 --force_host_devices 8

On a CPU-only machine `--force_host_devices` splits the host into that many XLA devices; they
share the same cores, so expect no speedup there (the figure then measures partitioning
overhead: collectives and smaller per-device kernels). On a machine with several GPUs, or a TPU
host, leave the flag out and list real device counts:

    python -m experiments.bench_devices --devices 1,2,4,8 --num_nodes 1024 --model cnn

Each device count builds the experiment with `mesh.devices=d`, compiles one chunk of
`--rounds` rounds, then times `--repeats` chunks (state kept on device, one host sync per chunk).
node-steps/s = num_nodes * rounds * local_steps / seconds; efficiency = speedup / d. Prints a
table and one JSON line per device count (also written to --out if given).
"""
from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--devices", default="1,2,4,8", help="comma-separated device counts")
  p.add_argument("--force_host_devices", type=int, default=0,
                 help="split the CPU into this many XLA devices (0: use the real devices)")
  p.add_argument("--num_nodes", type=int, default=64)
  p.add_argument("--algorithm", default="dfedavg")
  p.add_argument("--topology", default="ring")
  p.add_argument("--mixing_form", default="auto", help="dense | sparse | auto")
  p.add_argument("--model", default="mlp")
  p.add_argument("--hidden", default="200,200", help="MLP widths")
  p.add_argument("--local_steps", type=int, default=5)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--rounds", type=int, default=10, help="rounds per timed chunk")
  p.add_argument("--repeats", type=int, default=3, help="timed chunks (the best one counts)")
  p.add_argument("--out", default="", help="optional JSON-lines output file")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if args.force_host_devices:  # must precede the first import of jax
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.force_host_devices}")
  import json
  import time

  import jax
  import jax.numpy as jnp

  from dfl import train
  from experiments.configs import default

  results = []
  print(f"{jax.device_count()} {jax.default_backend()} device(s); {args.num_nodes} nodes, "
        f"{args.algorithm}/{args.topology}, {args.model}, {args.local_steps} local steps")
  print(f"{'devices':>8} {'node-steps/s':>14} {'speedup':>8} {'efficiency':>10} {'compile s':>10}")
  for devices in [int(d) for d in args.devices.split(",")]:
    c = default.get_config()
    c.num_nodes, c.mesh.devices = args.num_nodes, devices
    c.algorithm.name, c.topology.name = args.algorithm, args.topology
    c.topology.mixing_form, c.model.name = args.mixing_form, args.model
    c.model.hidden = tuple(int(h) for h in args.hidden.split(","))
    c.algorithm.local_steps, c.algorithm.batch_size = args.local_steps, args.batch_size
    exp = train.build_experiment(c)
    sparse = train.use_sparse_mixing(c.topology.mixing_form, exp.topology.matrix(0))
    mixing = train.mixing_operator(exp.topology, 0, sparse)
    state = exp.algorithm.init(exp.init_params)
    rounds_R = jnp.arange(args.rounds, dtype=jnp.int32)

    start = time.perf_counter()
    state, metrics = exp.run_chunk(state, exp.data, exp.train_key, rounds_R, mixing, False)
    jax.block_until_ready((state, metrics))
    compile_s = time.perf_counter() - start
    best = float("inf")
    for _ in range(args.repeats):
      start = time.perf_counter()
      state, metrics = exp.run_chunk(state, exp.data, exp.train_key, rounds_R, mixing, False)
      jax.block_until_ready((state, metrics))
      best = min(best, time.perf_counter() - start)
    node_steps = args.num_nodes * args.rounds * args.local_steps / best
    # relative to the first device count listed (normally 1)
    speedup = node_steps / results[0]["node_steps_per_s"] if results else 1.0
    scale = devices / results[0]["devices"] if results else 1.0
    record = {"devices": devices, "node_steps_per_s": round(node_steps, 1),
              "speedup": round(speedup, 3), "efficiency": round(speedup / scale, 3),
              "compile_s": round(compile_s, 2), "chunk_s": round(best, 4),
              "backend": jax.default_backend(), "num_nodes": args.num_nodes,
              "algorithm": args.algorithm, "topology": args.topology, "sparse": sparse,
              "model": args.model, "local_steps": args.local_steps, "rounds": args.rounds}
    results.append(record)
    print(f"{devices:>8} {node_steps:>14.0f} {speedup:>8.2f} {record['efficiency']:>10.2f} "
          f"{compile_s:>10.1f}", flush=True)
    print(json.dumps(record), flush=True)
  if args.out:
    with open(args.out, "a") as f:
      for r in results:
        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  main(sys.argv[1:])
