"""Throughput benchmark of the compiled engine against per-client loops (issue 9).

    python -m experiments.bench                                   # W1-W4 + gossip, CPU-sized
    python -m experiments.bench --workloads W1,W4 --repeats 7 --torch-python /work/torchvenv/bin/python

Workloads (Fashion-MNIST, Dirichlet alpha 0.3, ring with Metropolis-Hastings weights (1/3),
5 local steps of batch 32, lr 0.1, no momentum):
  W1   32 nodes, MLP 784-200-200-10, DFedSAM (rho 0.05)      W3   1024 nodes, MLP, DFedAvg
  W2   16 nodes, CNN (model cnn), DFedSAM (rho 0.05)             W3x2 2048 nodes (W3's scaling)
  W4   256 nodes, logistic regression 784->10, DFedAvg
  W5   16,384 nodes, logreg, DFedAvg, exponential graph  W5h 8,192 nodes (W5's scaling); both
       give empty Dirichlet shards a sample (data.min_samples=1) and skip the per-node loop
DFedSAM is local SGD with the SAM gradient (`dfl.sam`) followed by one gossip step; DFedAvg is
the same with rho = 0.

Each workload runs in its own subprocess (its own peak resident memory). In one process, side
by side and interleaved `--repeats` times: a 2048x2048 f32 matmul (the machine's rate at that
moment, the MFU reference), a chunk of `--rounds` compiled rounds, and a Python loop over nodes
of a jitted single-node local phase plus one jitted gossip (what a careful per-client JAX
simulator does). With `--torch-python`, the PyTorch per-client loop of
`../shared/peers/torch_loop_dfedsam.py` runs right after each workload (W1, W2, W4). Ratios are
taken within a repeat, then the median over repeats is reported with its spread (min-max), since
the shared machine's speed drifts between runs.

Model FLOPs per round = XLA's cost analysis of one node's gradient (SAM: two passes) on one
batch x local steps x nodes; the optimizer update and data gathering are not counted.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import resource
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TORCH_SCRIPT_NAME = "torch_loop_dfedsam.py"

WORKLOADS = {
    "W1": dict(nodes=32, model="mlp", rho=0.05, rounds=5, torch_args=["--model", "mlp", "--nodes", "32"]),
    "W2": dict(nodes=16, model="cnn", rho=0.05, rounds=1,
               torch_args=["--model", "cnn", "--nodes", "16", "--skip-local-eval"]),
    "W3": dict(nodes=1024, model="mlp", rho=0.0, rounds=2, torch_args=None),
    "W3x2": dict(nodes=2048, model="mlp", rho=0.0, rounds=2, torch_args=None),
    "W4": dict(nodes=256, model="logreg", rho=0.0, rounds=5,
               torch_args=["--model", "logreg", "--nodes", "256", "--rho", "0",
                           "--skip-local-eval"]),
    "W5": dict(nodes=16384, model="logreg", rho=0.0, rounds=2, torch_args=None,
               topology="exponential", min_samples=1, loop=False),
    "W5h": dict(nodes=8192, model="logreg", rho=0.0, rounds=2, torch_args=None,
                topology="exponential", min_samples=1, loop=False),
}
LOCAL_STEPS, BATCH, LR, ALPHA = 5, 32, 0.1, 0.3


def find_shared(sub: str) -> pathlib.Path | None:
  for parent in [REPO, *REPO.parents]:
    if (parent / "shared" / sub).exists():
      return parent / "shared" / sub
  return None


def _median_spread(values) -> dict:
  return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# ----------------------------------------------------------------------------- one workload
def workload_config(name: str, data_dir: str, execution: str):
  """The workload as a dfl config (the default config's evaluation: every 10 rounds)."""
  from experiments.configs import default
  spec = WORKLOADS[name]
  c = default.get_config()
  c.num_nodes = spec["nodes"]
  c.data.name, c.data.dir, c.data.partition, c.data.alpha = "fashion_mnist", data_dir, "dirichlet", ALPHA
  c.model.name = spec["model"]
  c.data.min_samples = spec.get("min_samples", 0)
  c.topology.name = spec.get("topology", "ring")
  if spec["rho"]:
    c.algorithm.name, c.algorithm.rho = "dfedsam", spec["rho"]
  else:
    c.algorithm.name = "dfedavg"
  c.algorithm.local_steps, c.algorithm.batch_size, c.algorithm.lr = LOCAL_STEPS, BATCH, LR
  c.train.execution = execution
  return c


def run_user(name: str, data_dir: str, execution: str, rounds: int) -> dict:
  """A user's run: `dfl.train.train_and_evaluate` with the default evaluation (every 10 rounds)
  and checkpointing, `rounds` rounds in a fresh workdir. s/round = wall time between the
  evaluation after the first chunk (compilation excluded) and the last evaluation, over the
  rounds in between; it includes every evaluation but the first two, metric writes and host syncs."""
  import tempfile
  from dfl.train import train_and_evaluate

  c = workload_config(name, data_dir, execution)
  c.train.rounds = rounds
  every = c.eval.every_rounds
  with tempfile.TemporaryDirectory() as workdir:
    t = time.perf_counter()
    summary = train_and_evaluate(c, workdir)
    total = time.perf_counter() - t
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      records = {r["round"]: r for r in map(json.loads, f) if "wall_seconds" in r}
  first, last = records[every], records[rounds]
  return {"rounds": rounds, "eval_every": every, "total_s": total,
          "round_s": (last["wall_seconds"] - first["wall_seconds"]) / (rounds - every),
          "final_test_accuracy": summary.get("final_test_accuracy")}


def run_workload(name: str, rounds: int, repeats: int, execution: str, data_dir: str,
                 loop_baseline: bool) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from dfl import execution as execution_lib
  from dfl.algorithms.local_then_gossip import local_then_gossip
  from dfl.engine import make_chunk_runner
  from dfl.local import NodeData, make_local_sgd, make_optimizer
  from dfl.mixing import mix
  from dfl.models import cross_entropy_loss
  from dfl.sam import sam_gradient
  from dfl.experiment import build_experiment, mixing_operator, use_sparse_mixing
  from dfl.layers import resolve_conv_impl
  spec = WORKLOADS[name]
  n, rounds = spec["nodes"], rounds or spec["rounds"]
  loop_baseline = loop_baseline and spec.get("loop", True)
  c = workload_config(name, data_dir, execution)
  exp = build_experiment(c)
  loss_fn = cross_entropy_loss(exp.model)
  optimizer = make_optimizer(lr=LR)
  gradient = sam_gradient(loss_fn, spec["rho"])
  local_sgd = make_local_sgd(loss_fn, optimizer, local_steps=LOCAL_STEPS, batch_size=BATCH,
                             gradient=gradient)
  algorithm = local_then_gossip(local_sgd, optimizer)
  run_chunk = make_chunk_runner(algorithm, execution)
  mixing = mixing_operator(exp.topology, 0, use_sparse_mixing("auto", exp.topology))
  data, key = exp.data, exp.train_key

  # Model FLOPs of one node's gradient on one batch.
  one = jax.tree.map(lambda x: x[0], exp.init_params)
  xb = jax.ShapeDtypeStruct((BATCH,) + data.x.shape[1:], data.x.dtype)
  yb = jax.ShapeDtypeStruct((BATCH,), data.y.dtype)
  cost = jax.jit(gradient).lower(one, xb, yb).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops_per_round = float(cost["flops"]) * LOCAL_STEPS * n

  A = jnp.asarray(np.random.default_rng(0).normal(size=(2048, 2048)).astype(np.float32))
  matmul = jax.jit(lambda a: a @ a)
  jax.block_until_ready(matmul(A))

  def time_matmul():
    t = time.perf_counter()
    jax.block_until_ready(matmul(A))
    return 2 * 2048 ** 3 / (time.perf_counter() - t)

  state = algorithm.init(exp.init_params)
  done, losses = 0, []

  def engine_chunk():
    nonlocal state, done
    rounds_R = jnp.arange(done, done + rounds, dtype=jnp.int32)
    t = time.perf_counter()
    state, metrics = run_chunk(state, data, key, rounds_R, mixing, False)
    losses.append(float(metrics.loss.mean()))  # the chunk's one host sync
    done += rounds
    return time.perf_counter() - t

  first = engine_chunk()
  steady = engine_chunk()
  peak_engine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # GiB
  assert run_chunk._cache_size() == 1, "recompiled between chunks"
  strategy = execution_lib.chosen.get(
      "local_then_gossip.<locals>.round_fn.<locals>.local_phase", (execution, ""))

  evaluate = exp.evaluate
  jax.block_until_ready(evaluate(state.params))
  eval_times = []
  for _ in range(2):
    t = time.perf_counter()
    jax.block_until_ready(evaluate(state.params))
    eval_times.append(time.perf_counter() - t)

  # The per-client loop: one jitted call per node (its whole local phase), one jitted gossip.
  x_all, y_all = data.x, data.y
  rows = [data.indices[i] for i in range(n)]
  sizes = [data.sizes[i] for i in range(n)]

  @jax.jit
  def node_phase(params, round_key, i, x, y, indices, size):
    # The training set is an argument, not a closed-over constant (which XLA would embed and
    # copy into the program).
    k = jax.random.fold_in(round_key, i)
    out = local_sgd(params, optimizer.init(params), k, NodeData(x, y, indices, size))
    return out[0], out[2]

  @jax.jit
  def gossip(params_list):
    mixed = mix(mixing, jax.tree.map(lambda *xs: jnp.stack(xs), *params_list))
    return [jax.tree.map(lambda x: x[i], mixed) for i in range(n)]

  node_params = [jax.tree.map(lambda x: x[i], state.params) for i in range(n)]
  index_args = [jnp.int32(i) for i in range(n)]

  def loop_round(t):
    nonlocal node_params
    round_key = jax.random.fold_in(key, t)
    start = time.perf_counter()
    outs = [node_phase(node_params[i], round_key, index_args[i], x_all, y_all, rows[i], sizes[i])
            for i in range(n)]
    node_params = gossip([p for p, _ in outs])
    jax.block_until_ready(node_params)
    return time.perf_counter() - start

  if loop_baseline:
    loop_round(0)
    loop_round(1)  # compiled, warm
  samples = []
  for r in range(repeats):
    rate = time_matmul()
    engine = engine_chunk() / rounds
    loop = (statistics.median(loop_round(r) for _ in range(min(rounds, 3)))
            if loop_baseline else float("nan"))
    samples.append((rate, engine, loop))
  rates, engine_s, loop_s = map(list, zip(*samples))
  mfu = [flops_per_round / e / m for m, e, _ in samples]
  return {
      "workload": name, "nodes": n, "model": spec["model"], "rho": spec["rho"],
      "strategy": strategy[0], "strategy_reason": strategy[1], "backend": jax.default_backend(),
      "conv": resolve_conv_impl(c.model.conv) if spec["model"] == "cnn" else None,
      "rounds_per_chunk": rounds, "repeats": repeats,
      "compile_s": first - steady, "round_s": _median_spread(engine_s),
      "node_steps_per_s": n * LOCAL_STEPS / statistics.median(engine_s),
      "flops_per_round": flops_per_round,
      "model_flops_per_s": flops_per_round / statistics.median(engine_s),
      "matmul_flops_per_s": _median_spread(rates), "mfu": _median_spread(mfu),
      "peak_rss_gib_engine": peak_engine,
      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
      "eval_s": statistics.median(eval_times),
      # A default run evaluates every 10 rounds: the share of its time spent evaluating.
      "eval_share": statistics.median(eval_times) / (
          statistics.median(eval_times) + 10 * statistics.median(engine_s)),
      "loop_round_s": _median_spread(loop_s) if loop_baseline else None,
      "engine_over_loop": (_median_spread([l / e for _, e, l in samples]) if loop_baseline
                           else None),
      "train_loss_first_last": [losses[0], losses[-1]],
  }


# ----------------------------------------------------------------------------- gossip
def run_gossip(sizes: list[int], dim: int, dense_max: int, repeats: int) -> list[dict]:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import topologies
  from dfl.mixing import DenseMixing, SparseMixing, mix

  mix_jit = jax.jit(mix)
  out = []
  for n in sizes:
    x = jnp.asarray(np.random.default_rng(n).normal(size=(n, dim)).astype(np.float32))
    for name in ("ring", "torus", "exponential"):
      topology = topologies.make(name, n)  # Metropolis-Hastings weights
      indices, weights = topology.neighbors(0)
      sparse = SparseMixing(jnp.asarray(indices), jnp.asarray(weights, jnp.float32))
      ops = {"sparse": sparse}
      if n <= dense_max:
        ops["dense"] = DenseMixing(jnp.asarray(topology.matrix(0), jnp.float32))
      times = {k: [] for k in ops}
      for k, op in ops.items():
        jax.block_until_ready(mix_jit(op, x))
      for _ in range(repeats):
        for k, op in ops.items():
          t = time.perf_counter()
          jax.block_until_ready(mix_jit(op, x))
          times[k].append(time.perf_counter() - t)
      row = {"graph": name, "nodes": n, "degree": int(indices.shape[1]), "dim": dim,
             "sparse_s": statistics.median(times["sparse"])}
      if "dense" in times:
        row["dense_s"] = statistics.median(times["dense"])
        row["dense_over_sparse"] = statistics.median(
            d / s for d, s in zip(times["dense"], times["sparse"]))
      if np.abs(np.asarray(mix_jit(sparse, x)) - np.asarray(
          mix_jit(ops["dense"], x) if "dense" in ops else mix_jit(sparse, x))).max() > 1e-4:
        raise AssertionError(f"dense and sparse mixing disagree on {name}, N={n}")
      out.append(row)
  return out


# ----------------------------------------------------------------------------- torch peer
def run_torch(python: str, script: str, data_dir: str, name: str, rounds: int) -> dict:
  cmd = [python, script, "--data-dir", os.path.join(data_dir, "fashion_mnist"), "--rounds",
         str(rounds), *WORKLOADS[name]["torch_args"]]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  m = re.search(r"SUMMARY median s/round \(after 1st\) ([0-9.]+)\s+min ([0-9.]+)", proc.stdout)
  if proc.returncode or not m:
    raise RuntimeError(f"torch peer failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
  return {"round_s": float(m.group(1)), "min_round_s": float(m.group(2))}


# ----------------------------------------------------------------------------- driver
def _worker(args) -> None:
  if args.worker == "gossip":
    result = {"gossip": run_gossip(args.gossip_sizes, args.gossip_dim, args.gossip_dense_max,
                                   args.repeats)}
  elif args.worker.startswith("user:"):
    result = run_user(args.worker[len("user:"):], args.data_dir, args.execution, args.user_rounds)
  else:
    result = run_workload(args.worker, args.rounds, args.repeats, args.execution, args.data_dir,
                          not args.no_loop)
  print("RESULT " + json.dumps(result), flush=True)


def _spawn(args, worker: str) -> dict:
  cmd = [sys.executable, "-m", "experiments.bench", "--worker", worker, "--rounds",
         str(args.rounds), "--repeats", str(args.repeats), "--execution", args.execution,
         "--data-dir", args.data_dir, "--gossip-sizes", ",".join(map(str, args.gossip_sizes)),
         "--gossip-dim", str(args.gossip_dim), "--gossip-dense-max", str(args.gossip_dense_max),
         "--user-rounds", str(args.user_rounds)]
  if args.no_loop:
    cmd.append("--no-loop")
  env = dict(os.environ)
  if args.xla_flags:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, check=False)
  line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
  if proc.returncode or line is None:
    raise RuntimeError(f"benchmark worker {worker} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
  return json.loads(line[len("RESULT "):])


def _fmt_spread(s: dict, scale: float = 1.0, fmt: str = "{:.3f}") -> str:
  return (fmt.format(s["median"] * scale) + " (" + fmt.format(s["min"] * scale) + "–"
          + fmt.format(s["max"] * scale) + ")")


def print_tables(results: list[dict], gossip: list[dict]) -> None:
  if results:
    print("\n| workload | N | model | strategy | compile s | s/round median (min–max) | "
          "node-steps/s | model GFLOP/s | matmul GFLOP/s | MFU | peak RSS GiB | eval s | "
          "eval share | per-node jitted loop s/round | engine vs loop | torch loop s/round | "
          "engine vs torch |")
    print("|" + "---|" * 17)
    for r in results:
      loop, torch = r["loop_round_s"], r.get("torch")
      strategy = r["strategy"] + (f", {r['conv']}" if r.get("conv") else "")  # e.g. "map, im2col"
      cells = [r["workload"], r["nodes"], r["model"] + (" SAM" if r["rho"] else ""), strategy,
               f"{r['compile_s']:.1f}", _fmt_spread(r["round_s"]), f"{r['node_steps_per_s']:.0f}",
               f"{r['model_flops_per_s'] / 1e9:.1f}",
               f"{r['matmul_flops_per_s']['median'] / 1e9:.0f}",
               _fmt_spread(r["mfu"], 100, "{:.0f}") + "%", f"{r['peak_rss_gib_engine']:.2f}",
               f"{r['eval_s']:.3f}", f"{100 * r['eval_share']:.1f}%",
               _fmt_spread(loop) if loop else "–",
               _fmt_spread(r["engine_over_loop"], 1, "{:.2f}") + "×" if loop else "–",
               f"{torch['round_s']:.3f}" if torch else "–",
               f"{torch['round_s'] / r['round_s']['median']:.2f}×" if torch else "–"]
      print("| " + " | ".join(map(str, cells)) + " |")
  if results:
    print_targets({r["workload"]: r for r in results})
  if gossip:
    print("\n| graph | N | K | dim | dense W@x ms | sparse ms | dense / sparse |")
    print("|" + "---|" * 7)
    for g in gossip:
      dense = f"{g['dense_s'] * 1e3:.2f}" if "dense_s" in g else "skipped"
      ratio = f"{g['dense_over_sparse']:.1f}×" if "dense_s" in g else "–"
      print(f"| {g['graph']} | {g['nodes']} | {g['degree']} | {g['dim']} | {dense} | "
            f"{g['sparse_s'] * 1e3:.2f} | {ratio} |")


def target_rows(by: dict) -> list[tuple[str, str, str, str]]:
  """(target, goal, measured, met / missed) for each target of the performance issues whose
  workloads ran; ratios are against the PyTorch loop measured right after each workload."""
  rows = []
  def torch_ratio(name, seconds):
    return by[name]["torch"]["round_s"] / seconds
  shares = {w: by[w]["eval_share"] for w in ("W1", "W2", "W3", "W4") if w in by}
  if shares:
    rows.append(("evaluation share of a default run (every 10 rounds)", "<= 10%",
                 ", ".join(f"{w} {100 * v:.1f}%" for w, v in shares.items()),
                 "met" if max(shares.values()) <= 0.10 else "missed"))
  w1 = by.get("W1")
  if w1 and w1.get("torch") and w1.get("user"):
    ratio = torch_ratio("W1", w1["user"]["round_s"])
    rows.append(("W1 vs the PyTorch loop, a user's run incl. evaluation", ">= 2.5x",
                 f"{ratio:.2f}x ({w1['user']['round_s']:.3f} vs {w1['torch']['round_s']:.3f} s/round)",
                 "met" if ratio >= 2.5 else "missed"))
  if w1 and w1.get("torch"):
    ratio = torch_ratio("W1", w1["round_s"]["median"])
    rows.append(("W1 vs the PyTorch loop, training only", ">= 2.5x",
                 f"{ratio:.2f}x ({w1['round_s']['median']:.3f} vs {w1['torch']['round_s']:.3f})",
                 "met" if ratio >= 2.5 else "missed"))
  if w1:
    mfu = w1["mfu"]["median"]
    rows.append(("W1 MFU", ">= 50%", f"{100 * mfu:.0f}%", "met" if mfu >= 0.5 else "missed"))
  for name, goal in (("W4", 10.0), ("W2", 1.2)):
    r = by.get(name)
    if r and r.get("torch"):  # same nodes and local steps: per round = per node-step
      ratio = torch_ratio(name, r["round_s"]["median"])
      what = "W4 vs the PyTorch loop" if name == "W4" else "W2 (CNN) vs the PyTorch loop per node-step"
      rows.append((what, f">= {goal:g}x", f"{ratio:.2f}x ({r['round_s']['median']:.3f} vs "
                   f"{r['torch']['round_s']:.3f})", "met" if ratio >= goal else "missed"))
  if "W5" in by:
    peak = by["W5"]["peak_rss_gib"]
    rows.append(("W5 (16,384 nodes) peak memory", "<= 8 GiB", f"{peak:.2f} GiB",
                 "met" if peak <= 8 else "missed"))
    if "W5h" in by:
      growth = by["W5"]["round_s"]["median"] / by["W5h"]["round_s"]["median"]
      rows.append(("W5 s/round growth, 8,192 -> 16,384 nodes", "<= 2.1x",
                   f"{growth:.2f}x ({by['W5h']['round_s']['median']:.2f} -> "
                   f"{by['W5']['round_s']['median']:.2f} s)", "met" if growth <= 2.1 else "missed"))
  return rows


def print_targets(by: dict) -> None:
  rows = target_rows(by)
  if rows:
    print("\n| target | goal | measured | |")
    print("|---|---|---|---|")
    for row in rows:
      print("| " + " | ".join(row) + " |")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workloads", default="W1,W2,W3,W4",
                 help=f"comma-separated subset of {sorted(WORKLOADS)} (empty: none)")
  p.add_argument("--rounds", type=int, default=0,
                 help="rounds per compiled chunk (0: the workload's default, 1-5)")
  p.add_argument("--repeats", type=int, default=5, help="interleaved timed repetitions")
  p.add_argument("--execution", default="auto", help="auto | vmap | map | chunk:G (dfl.execution)")
  p.add_argument("--data-dir", default=os.environ.get("DFL_DATA_DIR") or str(find_shared("data") or ""))
  p.add_argument("--no-loop", action="store_true", help="skip the per-node jitted loop baseline")
  p.add_argument("--torch-python", default="", help="python with torch==2.13.0: also run the peer")
  p.add_argument("--torch-rounds", type=int, default=6)
  p.add_argument("--no-gossip", action="store_true")
  p.add_argument("--gossip-sizes", default="64,256,1024,4096")
  p.add_argument("--gossip-dim", type=int, default=7850, help="floats per node model (logreg)")
  p.add_argument("--gossip-dense-max", type=int, default=2048, help="largest N for dense W@x")
  p.add_argument("--user-run", default="W1",
                 help="workloads also timed as a user's run (train_and_evaluate, evaluating "
                      "every 10 rounds), in their own process; empty: none")
  p.add_argument("--user-rounds", type=int, default=40, help="rounds of a user's run")
  p.add_argument("--xla-flags", default="", help="extra XLA_FLAGS for the workers")
  p.add_argument("--json", default="", help="also write all results to this file")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.gossip_sizes = [int(s) for s in str(args.gossip_sizes).split(",") if s]
  workloads = [w for w in args.workloads.split(",") if w]
  unknown = [w for w in workloads if w not in WORKLOADS]
  if unknown:
    p.error(f"unknown workload {unknown[0]!r}; valid: {sorted(WORKLOADS)}")
  if args.worker:
    return _worker(args)
  if not args.data_dir:
    p.error("Fashion-MNIST not found: pass --data-dir or set DFL_DATA_DIR")
  torch_script = find_shared("peers") and find_shared("peers") / TORCH_SCRIPT_NAME

  user_runs = [w for w in args.user_run.split(",") if w]
  unknown = [w for w in user_runs if w not in WORKLOADS]
  if unknown:
    p.error(f"unknown --user-run workload {unknown[0]!r}; valid: {sorted(WORKLOADS)}")
  if args.user_rounds < 20 or args.user_rounds % 10:
    p.error(f"--user-rounds={args.user_rounds}: a multiple of 10 (the evaluation period), >= 20")
  results = []
  for w in workloads:
    print(f"running {w} ...", file=sys.stderr, flush=True)
    r = _spawn(args, w)
    if w in user_runs:
      r["user"] = _spawn(args, "user:" + w)
    if args.torch_python and WORKLOADS[w]["torch_args"]:
      r["torch"] = run_torch(args.torch_python, str(torch_script), args.data_dir, w,
                             args.torch_rounds)
    results.append(r)
    print(json.dumps(r), file=sys.stderr, flush=True)  # partial results survive an interrupt
  gossip = [] if args.no_gossip else _spawn(args, "gossip")["gossip"]
  import jax  # only for the header line
  print(f"\ndfl benchmark, jax {jax.__version__} {jax.default_backend()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}, XLA_FLAGS={args.xla_flags or os.environ.get('XLA_FLAGS', '')!r}")
  print_tables(results, gossip)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"workloads": results, "gossip": gossip}, f, indent=1)


if __name__ == "__main__":
  main()
