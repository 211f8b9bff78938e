"""Time to accuracy on heterogeneous devices: MoDeST, D-PSGD, DFedAvg, FedAvg; sync vs async gossip.

    python -m experiments.time_to_accuracy --workdir runs/time_to_accuracy \
        --results experiments/figures/time_to_accuracy

Every run simulates time (dfl/system): the N nodes take their compute speed, uplink and latency
from the bundled device trace experiments/traces/devices.csv (three synthetic device classes,
about 16x between the slowest and the fastest in compute and 50x in uplink). On the embedded
digits dataset (Dirichlet(0.5) labels, an MLP with one hidden layer of 64, 16 nodes) it runs

  * MoDeST (s = 4 participants, a = 1 aggregator, sf = 1) and FedAvg with the same 4 clients per
    round; D-PSGD with K = 2 local steps and DFedAvg with K = 5 on a ring (with equal K and no
    momentum the two are the same algorithm, dfl/algorithms/dpsgd.py, so D-PSGD takes fewer);
  * the same with stragglers cut: a round deadline at the --deadline_quantile of the nodes' round
    times (late updates dropped) for D-PSGD, DFedAvg and FedAvg, and sf = 0.75 for MoDeST (its
    aggregator goes on with the first 3 of 4 models; MoDeST refuses a deadline);
  * synchronous gossip learning (β = 0.5, K = 5, ring) and asynchronous gossip learning
    (dfl/algorithms/async_gossip.py: each node trains and sends on its own period; one tick =
    the slowest node's period / --slowest_ticks, nodes faster than a tick capped at one event
    per tick, which favours the synchronous side), compared at equal simulated time.

Synchronous rounds see per-round compute noise (system.compute_jitter, sigma 0.5: who is slow
changes from round to round); async gossip draws its intervals x U(0.8, 1.2).

Prints and writes --results/time_to_accuracy.{md,csv,png}: per run, simulated seconds to
--target test accuracy (of the node-averaged model), rounds to it, seconds per round, the
dropped-update fraction, and the ratio of FedAvg's time to target over each run's. About 3-4
minutes on 2 CPU cores; finished runs of the same config are reused.
"""
from __future__ import annotations

import argparse
import csv
import os

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dfl.experiment import build_experiment  # noqa: E402
from dfl.system.model import node_seconds  # noqa: E402
from dfl.system.setup import out_degrees  # noqa: E402
from experiments.configs import default  # noqa: E402
from experiments.modest_comparison import run  # noqa: E402  (trains or reuses a finished run)
from launch.report import first_reaching  # noqa: E402

TRACE = "trace:experiments/traces/devices.csv"


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", default="runs/time_to_accuracy")
  p.add_argument("--results", default="experiments/figures/time_to_accuracy")
  p.add_argument("--num_nodes", type=int, default=16)
  p.add_argument("--sample_size", type=int, default=4, help="MoDeST s = FedAvg clients/round")
  p.add_argument("--gossip_rounds", type=int, default=60, help="rounds of the gossip runs")
  p.add_argument("--server_rounds", type=int, default=100, help="rounds of FedAvg and MoDeST")
  p.add_argument("--target", type=float, default=0.85)
  p.add_argument("--deadline_quantile", type=float, default=0.75,
                 help="deadline = this quantile of the nodes' round times (0.75: about a "
                      "quarter of the nodes late)")
  p.add_argument("--slowest_ticks", type=int, default=8,
                 help="async gossip: ticks per period of the slowest node (tick = its period / "
                      "this; nodes faster than a tick are capped at one event per tick)")
  p.add_argument("--hidden", type=int, default=64, help="MLP width (one hidden layer)")
  p.add_argument("--compute_jitter", type=float, default=0.5,
                 help="synchronous runs: sigma of each node's per-round log-normal compute factor")
  p.add_argument("--interval_jitter", type=float, default=0.2,
                 help="async gossip: each interval x U(1 - j, 1 + j) (DFL_torch: 10 +- 2 ticks)")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args()


def base_config(args, algorithm: str, rounds: int):
  c = default.get_config()
  c.seed = args.seed
  c.num_nodes = args.num_nodes
  c.algorithm.name = algorithm
  c.algorithm.lr = 0.05
  c.train.rounds = rounds
  c.eval.every_rounds = 2
  c.eval.local_examples = 200
  c.eval.local_subset = "shared"  # all nodes on the first 200, as the README measured
  c.model.hidden = (args.hidden,)
  c.system.enabled = True
  c.system.samples_per_second = TRACE
  c.system.bandwidth_bytes_per_second = TRACE
  c.system.latency_seconds = TRACE
  if algorithm in ("fedavg", "modest"):
    c.algorithm.client_fraction = args.sample_size / args.num_nodes
  if algorithm == "modest":
    c.algorithm.sample_size = args.sample_size
    c.algorithm.min_models = 1
  if algorithm == "dpsgd":
    c.algorithm.local_steps = 2
  if algorithm == "async_gossip":
    c.algorithm.interval_jitter = args.interval_jitter
  else:
    c.system.compute_jitter = args.compute_jitter
  return c


def deadline_for(config, quantile: float) -> float:
  """The quantile of the per-node times of one round (clients' upload times for FedAvg)."""
  exp = build_experiment(config)
  sent_N = (np.ones(config.num_nodes) if config.algorithm.name == "fedavg"
            else out_degrees(exp.topology))
  return float(np.quantile(node_seconds(exp.system, exp.samples_N, sent_N, exp.model_bytes),
                           quantile))


def settings(args):
  """(label, group, config) of every run."""
  out = []
  for name, label in (("modest", "MoDeST"), ("fedavg", "FedAvg"), ("dpsgd", "D-PSGD K=2"),
                      ("dfedavg", "DFedAvg K=5")):
    rounds = args.server_rounds if name in ("modest", "fedavg") else args.gossip_rounds
    plain = base_config(args, name, rounds)
    out.append((label, "all updates", plain))
    cut = base_config(args, name, rounds)
    if name == "modest":
      cut.algorithm.success_fraction = 0.75
      out.append((label + " sf=0.75", "stragglers cut", cut))
    else:
      cut.system.deadline_seconds = round(deadline_for(plain, args.deadline_quantile), 4)
      out.append((label + f" deadline {cut.system.deadline_seconds:.3g}s", "stragglers cut", cut))
  sync = base_config(args, "gossip", args.gossip_rounds)
  out.append(("gossip learning (sync)", "gossip", sync))
  asyn = base_config(args, "async_gossip", 1)
  # As many ticks as cover the synchronous run's simulated time.
  exp = build_experiment(asyn)
  seconds_N = node_seconds(exp.system, exp.samples_N, out_degrees(exp.topology), exp.model_bytes)
  # One tick = the slowest node's period / slowest_ticks: as many ticks as the synchronous
  # rounds would last without compute jitter (each at least the slowest node's period).
  asyn.system.tick_seconds = round(float(seconds_N.max()) / args.slowest_ticks, 6)
  asyn.train.rounds = args.gossip_rounds * args.slowest_ticks
  asyn.eval.every_rounds = 2 * args.slowest_ticks
  capped = int(np.sum(seconds_N < asyn.system.tick_seconds))
  print(f"async gossip: tick {asyn.system.tick_seconds:.4g} s, periods "
        f"{seconds_N.min():.3g}-{seconds_N.max():.3g} s, {capped} of {len(seconds_N)} nodes "
        "faster than a tick (capped at one event per tick)")
  out.append(("gossip learning (async)", "gossip", asyn))
  return out


def main():
  args = parse_args()
  os.makedirs(args.results, exist_ok=True)
  rows, curves = [], {}
  for label, group, config in settings(args):
    slug = label.split(" deadline")[0].replace(" ", "_").replace("(", "").replace(")", "")
    slug += "_cut" if group == "stragglers cut" else ""
    records = run(config, os.path.join(args.workdir, slug))
    curves[label] = (group, records)
    reached = first_reaching(records, "test_accuracy", args.target)
    final = records[-1]
    dropped = [r["dropped_update_fraction"] for r in records[1:]
               if "dropped_update_fraction" in r]
    rows.append({
        "group": group, "run": label,
        "final_accuracy": round(final["test_accuracy"], 4),
        "sim_s_per_round": round(final["sim_seconds"] / final["round"], 3),
        "rounds_to_target": reached["round"] if reached else "not reached",
        "sim_s_to_target": round(reached["sim_seconds"], 1) if reached else "not reached",
        "dropped_updates": round(float(np.mean(dropped)), 3) if dropped else None,
        "MB_to_target": round(reached["comm_bytes"] / 1e6, 1) if reached else "not reached",
    })
  fedavg = next(r for r in rows if r["run"] == "FedAvg")["sim_s_to_target"]
  for r in rows:
    both = isinstance(fedavg, float) and isinstance(r["sim_s_to_target"], float)
    r["fedavg_time_over_this"] = round(fedavg / r["sim_s_to_target"], 2) if both else None
  write_table(rows, os.path.join(args.results, "time_to_accuracy"), args.target)
  plot(curves, args, os.path.join(args.results, "time_to_accuracy.png"))


def write_table(rows, stem: str, target: float) -> None:
  with open(stem + ".csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  fmt = lambda v: "-" if v is None else str(v)
  lines = [f"Target test accuracy {target}.", "",
           "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
  lines += ["| " + " | ".join(fmt(v) for v in r.values()) + " |" for r in rows]
  with open(stem + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


def plot(curves, args, path: str) -> None:
  groups = ("all updates", "stragglers cut", "gossip")
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), sharey=True)
  for ax, group in zip(axes, groups):
    for label, (g, records) in curves.items():
      if g == group:
        ax.plot([r["sim_seconds"] for r in records], [r["test_accuracy"] for r in records],
                label=label)
    ax.axhline(args.target, color="gray", ls=":", lw=1)
    ax.set_xlabel("simulated seconds")
    ax.set_title(group)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  axes[0].set_ylabel("test accuracy (node-averaged model)")
  fig.suptitle(f"digits, N={args.num_nodes}, devices from experiments/traces/devices.csv")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
