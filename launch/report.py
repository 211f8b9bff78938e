"""Results of a sweep: one row per setting, mean ± std over seeds, and accuracy figures.

    python -m launch.report runs/grid [--target=0.8] [--metric=test_accuracy] [--out=DIR]

Reads every run under the directory (config.json, metrics.jsonl, summary.json; runs without a
summary.json are unfinished and left out unless --include_unfinished). Runs whose configs differ
only in `seed` (and in fields that do not change results: logging, checkpointing, data.dir)
form one setting; the table's first columns are the config fields that vary between settings.
Per setting: final and best accuracy, rounds to reach --target (and simulated seconds to it,
`sim_seconds`, when the runs had system.enabled=True), total communication, wall time,
each as mean ± sample std (ddof=1) over seeds. Printed as Markdown; written to
OUT/report_<metric>.md, .csv and .png (accuracy vs rounds and vs bytes sent, one line per
setting, a band of ± one std over seeds), so reports of different metrics sit side by side.
A sweep's run that failed before writing config.json (a workdir with only run.log) is listed
under the table with its log; the fields that define settings are those that vary over every run
of the directory, failed and unfinished ones included, so a column stays when one setting is left.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import shlex
from typing import Any, Optional

import numpy as np
from absl import flags

from dfl.errors import UserError
from launch import cli

_TARGET = flags.DEFINE_float("target", None, "Accuracy to reach (a loss or distance: to get "
                              "below) for the rounds-to-target column.")
_METRIC = flags.DEFINE_string("metric", "test_accuracy",
                              "Accuracy field of metrics.jsonl (e.g. test_accuracy_local_mean).")
_OUT = flags.DEFINE_string("out", None, "Where to write report.{md,csv,png}; default: the directory.")
_UNFINISHED = flags.DEFINE_bool("include_unfinished", False,
                                "Also count runs without summary.json (final = last evaluation).")

# Config fields that do not define a setting: seeds are averaged over; the rest do not change results.
NOT_A_SETTING = ("seed", "logging.", "checkpoint.", "data.dir")


@dataclasses.dataclass
class RunResult:
  workdir: str
  config: dict[str, Any]  # flattened: {"topology.name": "ring", ...}
  records: list[dict]  # metrics.jsonl
  summary: Optional[dict]  # summary.json; None while unfinished


@dataclasses.dataclass
class Setting:
  fields: dict[str, Any]  # the varying config fields that define this setting
  runs: list[RunResult]


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
  return flat


def load_runs(root: str) -> list[RunResult]:
  """Every workdir under `root` (at any depth) holding config.json and metrics.jsonl."""
  runs = []
  for dirpath, dirnames, filenames in sorted(os.walk(root)):
    dirnames.sort()
    if "config.json" not in filenames or "metrics.jsonl" not in filenames:
      continue
    with open(os.path.join(dirpath, "config.json")) as f:
      config = flatten(json.load(f))
    with open(os.path.join(dirpath, "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f if line.strip()]
    summary = None
    if "summary.json" in filenames:
      with open(os.path.join(dirpath, "summary.json")) as f:
        summary = json.load(f)
    if records:
      runs.append(RunResult(dirpath, config, records, summary))
  return runs


@dataclasses.dataclass
class FailedStart:
  """A sweep's workdir with a run.log but no config.json: the run failed before it started."""
  workdir: str
  overrides: dict[str, str]  # the --config.FIELD=VALUE flags of its last command


def load_failed_starts(root: str) -> list[FailedStart]:
  failed = []
  for dirpath, dirnames, filenames in sorted(os.walk(root)):
    dirnames.sort()
    if ("run.log" not in filenames or "runs.json" in filenames or
        any("config.json" in names for _, _, names in os.walk(dirpath))):
      continue  # (a batch logs in its own folder with its runs.json, its runs elsewhere)
    with open(os.path.join(dirpath, "run.log"), errors="replace") as f:
      commands = [line[4:] for line in f if line.startswith("=== ")]  # see launch/sweep.py
    overrides = {}
    if commands:
      for token in shlex.split(commands[-1])[2:]:  # after the date and time
        m = re.match(r"^--config\.([^=]+)=(.*)$", token)
        if m:
          overrides[m.group(1)] = m.group(2)
    failed.append(FailedStart(dirpath, overrides))
  return failed


def _defines_setting(field: str) -> bool:
  return not any(field == p or (p.endswith(".") and field.startswith(p)) for p in NOT_A_SETTING)


def group_settings(runs: list[RunResult], others: tuple[RunResult, ...] = (),
                   also_varying: tuple[str, ...] = ()) -> list[Setting]:
  """Groups runs that differ only in seed; settings are labelled by the fields that vary over
  `runs` and `others` (runs left out of the table), plus `also_varying`."""
  fields = sorted({f for r in runs for f in r.config if _defines_setting(f)})
  every = [*runs, *others]
  varying = [f for f in fields if len({repr(r.config.get(f)) for r in every}) > 1
             or f in also_varying]
  groups: dict[str, Setting] = {}
  for run in runs:
    key = repr([run.config.get(f) for f in fields])
    setting = groups.setdefault(key, Setting({f: run.config.get(f) for f in varying}, []))
    setting.runs.append(run)
  return sorted(groups.values(), key=lambda s: [repr(v) for v in s.fields.values()])


def lower_is_better(metric: str) -> bool:
  """Losses and distances (e.g. distance_to_optimum) improve downwards: their best is the
  minimum and their target is reached at or below it; accuracies the other way."""
  return "loss" in metric or "distance" in metric


def first_reaching(records: list[dict], metric: str, target: float) -> Optional[dict]:
  """The first evaluation record whose `metric` reaches `target`, or None."""
  lower = lower_is_better(metric)
  for r in records:
    if r[metric] is not None and (r[metric] <= target if lower else r[metric] >= target):
      return r
  return None


def rounds_to_target(records: list[dict], metric: str, target: float) -> Optional[int]:
  reached = first_reaching(records, metric, target)
  return None if reached is None else int(reached["round"])


def time_to_target(records: list[dict], metric: str, target: float) -> Optional[float]:
  """Simulated seconds (`sim_seconds`, a run with system.enabled=True) at the first record
  reaching `target`; None if never reached or the run has no clock."""
  reached = first_reaching(records, metric, target)
  return None if reached is None or "sim_seconds" not in reached else reached["sim_seconds"]


def _mean_std(values: list[float]) -> tuple[float, float]:
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def setting_row(setting: Setting, metric: str, target: Optional[float]) -> dict[str, Any]:
  """The numbers of one table row (means and stds over the setting's seeds)."""
  runs = setting.runs
  missing = next((r for r in runs if metric not in r.records[-1]), None)
  if missing is not None:
    numeric = sorted(k for k, v in missing.records[-1].items() if isinstance(v, float))
    raise UserError(f"--metric={metric!r} is not in {missing.workdir}/metrics.jsonl (a "
                    f"regression reports no accuracy); valid: {numeric}.")
  row: dict[str, Any] = dict(setting.fields)
  row["seeds"] = len(runs)
  best = min if lower_is_better(metric) else max
  per_run = {
      "final": [r.records[-1][metric] for r in runs],
      "best": [best(x[metric] for x in r.records) for r in runs],
      "comm_bytes": [r.records[-1]["comm_bytes"] for r in runs],
      "wall_seconds": [(r.summary or r.records[-1])["wall_seconds"] for r in runs],
  }
  for name, values in per_run.items():
    row[f"{name}_mean"], row[f"{name}_std"] = _mean_std(values)
  if target is not None:
    reached = [t for t in (rounds_to_target(r.records, metric, target) for r in runs) if t is not None]
    row["rounds_to_target_mean"], row["rounds_to_target_std"] = (
        _mean_std(reached) if reached else (math.nan, math.nan))
    row["reached_target"] = len(reached)
    if all("sim_seconds" in r.records[-1] for r in runs):  # simulated time (dfl/system)
      times = [x for x in (time_to_target(r.records, metric, target) for r in runs)
               if x is not None]
      row["sim_seconds_to_target_mean"], row["sim_seconds_to_target_std"] = (
          _mean_std(times) if times else (math.nan, math.nan))
  return row


def _pm(mean: float, std: float, fmt: str, n: int) -> str:
  return f"{mean:{fmt}} ± {std:{fmt}}" if n > 1 else f"{mean:{fmt}}"


def markdown_table(rows: list[dict], fields: list[str], metric: str, target: Optional[float]) -> str:
  head = [*fields, "seeds", f"final {metric}", f"best {metric}"]
  timed = target is not None and all("sim_seconds_to_target_mean" in row for row in rows)
  if target is not None:
    head.append(f"rounds to {target:g}")
  if timed:
    head.append(f"sim s to {target:g}")
  head += ["comm (MB)", "wall (s)"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  fmt = ".4g" if lower_is_better(metric) else ".4f"  # distances reach 1e-12
  for row in rows:
    pm = lambda name, fmt, scale=1.0: _pm(row[f"{name}_mean"] / scale, row[f"{name}_std"] / scale,
                                          fmt, row["seeds"])
    cells = [str(row[f]) for f in fields] + [str(row["seeds"]),
             pm("final", fmt), pm("best", fmt)]
    if target is not None:
      if row["reached_target"] == 0:
        cells.append("not reached")
      else:
        cell = _pm(row["rounds_to_target_mean"], row["rounds_to_target_std"], ".1f",
                   row["reached_target"])
        if row["reached_target"] < row["seeds"]:
          cell += f" ({row['reached_target']}/{row['seeds']} seeds)"
        cells.append(cell)
      if timed:
        cells.append("not reached" if row["reached_target"] == 0 else
                     pm("sim_seconds_to_target", ".1f"))
    cells += [pm("comm_bytes", ".2f", 1e6), pm("wall_seconds", ".1f")]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_csv(rows: list[dict], path: str) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def _label(setting: Setting) -> str:
  return ", ".join(f"{f.split('.')[-2] if f.endswith('.name') else f}={v}"
                   for f, v in setting.fields.items()) or "all runs"


def plot(settings: list[Setting], metric: str, path: str) -> None:
  """Accuracy vs rounds and vs communicated bytes; mean over seeds with a ± std band."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
  for setting in settings:
    length = min(len(r.records) for r in setting.runs)  # unfinished runs: common prefix
    take = lambda key: np.array([[x[key] for x in r.records[:length]] for r in setting.runs], float)
    y = take(metric)
    mean, std = y.mean(0), (y.std(0, ddof=1) if len(y) > 1 else np.zeros(length))
    for ax, x in zip(axes, (take("round").mean(0), take("comm_bytes").mean(0) / 1e6)):
      (line,) = ax.plot(x, mean, label=_label(setting))
      ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
  axes[0].set_xlabel("round")
  axes[1].set_xlabel("communication, all nodes (MB)")
  axes[0].set_ylabel(metric)
  if "distance" in metric:  # distances to x* shrink geometrically
    axes[0].set_yscale("log")
  for ax in axes:
    ax.grid(alpha=0.3)
  axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def make_report(root: str, *, target: Optional[float] = None, metric: str = "test_accuracy",
                out: Optional[str] = None, include_unfinished: bool = False) -> tuple[str, list[dict]]:
  """Writes report.{md,csv,png} under `out` (default `root`); returns (markdown, rows)."""
  runs = load_runs(root)
  failed = load_failed_starts(root)
  finished = [r for r in runs if r.summary is not None or include_unfinished]
  if not finished:
    raise UserError(f"No {'' if include_unfinished else 'finished '}runs under {root!r} "
                     "(a run is a directory with config.json and metrics.jsonl"
                     f"{'' if include_unfinished else ' and summary.json'}).")
  swept_in_failed = tuple(f for x in failed for f in x.overrides if _defines_setting(f))
  settings = group_settings(finished, tuple(runs), swept_in_failed)
  rows = [setting_row(s, metric, target) for s in settings]
  fields = list(settings[0].fields)
  markdown = markdown_table(rows, fields, metric, target)
  if len(finished) < len(runs):
    markdown += f"\n\n{len(runs) - len(finished)} unfinished run(s) left out."
  if failed:
    markdown += f"\n\n{len(failed)} run(s) failed before writing config.json, left out:"
    for x in failed:
      label = ", ".join(f"{k}={v}" for k, v in x.overrides.items()) or os.path.relpath(x.workdir, root)
      markdown += f"\n- {label} (log: {os.path.join(x.workdir, 'run.log')})"
  out = out or root
  os.makedirs(out, exist_ok=True)
  base = os.path.join(out, report_name(metric))
  with open(base + ".md", "w") as f:
    f.write(markdown + "\n")
  write_csv(rows, base + ".csv")
  plot(settings, metric, base + ".png")
  return markdown, rows


def report_name(metric: str) -> str:
  """report_<metric>: reports of different metrics do not overwrite each other."""
  return f"report_{metric}"


def main(argv):
  if len(argv) != 2:
    raise UserError("Usage: python -m launch.report DIR [--target=0.8] [--metric=...]")
  markdown, _ = make_report(argv[1], target=_TARGET.value, metric=_METRIC.value, out=_OUT.value,
                            include_unfinished=_UNFINISHED.value)
  print(markdown)
  base = os.path.join(_OUT.value or argv[1], report_name(_METRIC.value))
  print(f"\nWrote {base}.md, .csv and .png")


if __name__ == "__main__":
  cli.run(main)
