"""Sweep axes -> runs, workdir names, and the commands handed to launch.main / SLURM."""
import json
import os
import sys

import pytest

from experiments.configs import default
from launch import sweep, sweep_spec


def test_split_values_keeps_bracketed_commas():
  assert sweep_spec.split_values("ring, torus,(16,),(32, 32)") == ["ring", "torus", "(16,)", "(32, 32)"]
  with pytest.raises(ValueError, match="Empty value"):
    sweep_spec.split_values("a,,b")


def test_expand_is_product_over_axes_and_zip_within():
  axes = [{"topology.name": ["ring", "complete"]},
          {"algorithm.lr": ["0.1", "0.05"], "algorithm.local_steps": ["5", "10"]},
          {"seed": ["0", "1"]}]
  runs = sweep_spec.expand(axes)
  assert len(runs) == 2 * 2 * 2
  assert runs[0] == (("topology.name", "ring"), ("algorithm.lr", "0.1"),
                     ("algorithm.local_steps", "5"), ("seed", "0"))
  assert (("algorithm.lr", "0.05"), ("algorithm.local_steps", "10")) == runs[3][1:3]
  pairs = {(dict(r)["algorithm.lr"], dict(r)["algorithm.local_steps"]) for r in runs}
  assert pairs == {("0.1", "5"), ("0.05", "10")}


def test_run_names_are_safe_stable_and_distinct():
  plain = sweep_spec.run_name((("topology.name", "ring"), ("seed", "0")))
  assert plain == "topology.name=ring__seed=0"
  a = sweep_spec.run_name((("model.hidden", "(16,)"),))
  b = sweep_spec.run_name((("model.hidden", "[16,]"),))
  assert "/" not in a and "(" not in a and a != b
  assert a == sweep_spec.run_name((("model.hidden", "(16,)"),))
  long = sweep_spec.run_name(tuple((f"f{i}", "x" * 30) for i in range(20)))
  assert len(long) < 200
  assert sweep_spec.run_name(()) == "base"


def test_axes_checked_against_config():
  config = default.get_config()
  with pytest.raises(ValueError, match="'topology.nmae' is not a field"):
    sweep_spec.check_axes([{"topology.nmae": ["ring"]}], config)
  with pytest.raises(ValueError, match="equally many"):
    sweep_spec.check_axes([{"algorithm.lr": ["0.1", "0.2"], "algorithm.local_steps": ["5"]}], config)
  with pytest.raises(ValueError, match="set twice"):
    sweep_spec.check_axes([{"train.rounds": ["5"]}], config, fixed=["train.rounds"])


def test_command_line_axes_replace_config_axes_over_the_same_fields():
  base = [{"topology.name": ["ring"]}, {"seed": ["0", "1", "2"]}]
  merged = sweep_spec.merge_axes(base, [{"seed": ["7"]}, {"algorithm.name": ["dpsgd"]}])
  assert merged == [{"topology.name": ["ring"]}, {"seed": ["7"]}, {"algorithm.name": ["dpsgd"]}]
  with pytest.raises(ValueError, match="overlaps"):
    sweep_spec.merge_axes([{"algorithm.lr": ["1"], "seed": ["0"]}], [{"seed": ["1"]}])


def test_config_override_tokens_forwarded_as_typed():
  argv = ["--config=x.py", "--root=r", "--config.train.rounds=5", "--config.model.hidden", "(8,)",
          "--sweep=seed=0,1", "--noconfig.model.same_init"]
  assert sweep.config_override_tokens(argv) == ["--config.train.rounds=5", "--config.model.hidden",
                                                "(8,)", "--noconfig.model.same_init"]


def test_get_sweep_of_a_config_file_plans_runs_and_slurm_array(tmp_path):
  config_file = tmp_path / "exp.py"
  config_file.write_text(
      "from experiments.configs import default\n"
      "def get_config():\n  return default.get_config()\n"
      "def get_sweep():\n"
      "  return [{'topology.name': ['ring', 'complete']}, {'model.hidden': [(16,), (8, 8)]}]\n")
  config = default.get_config()
  runs = sweep.plan_runs(config, str(config_file), str(tmp_path / "root"), ["--config.train.rounds=3"],
                         [], [], seeds="0,1")
  assert len(runs) == 2 * 2 * 2
  assert runs[0].command[:3] == (sys.executable, "-m", "launch.main")
  assert runs[0].command[-4:] == ("--config.train.rounds=3", "--config.topology.name=ring",
                                  "--config.model.hidden=(16,)", "--config.seed=0")
  assert len({r.workdir for r in runs}) == 8
  script = sweep.slurm_script(runs, str(tmp_path / "root"), parallel=3, sbatch=["--gres=gpu:1"])
  assert "#SBATCH --array=0-7%3" in script and "#SBATCH --gres=gpu:1" in script
  assert script.count("launch.main") == 8 and 'eval "${COMMANDS[$SLURM_ARRAY_TASK_ID]}"' in script
  # The command line replaces the config file's axis over the same field.
  runs = sweep.plan_runs(config, str(config_file), str(tmp_path / "root"), [],
                         ["topology.name=torus"], [], seeds=None)
  assert [os.path.basename(r.workdir) for r in runs] == [
      sweep_spec.run_name((("topology.name", "torus"), ("model.hidden", v))) for v in ("(16,)", "(8, 8)")]


def test_batches_group_runs_that_differ_only_in_batchable_values(tmp_path):
  config = default.get_config()
  runs = sweep.plan_runs(config, "experiments/configs/default.py", str(tmp_path), ["--config.num_nodes=4"],
                         ["algorithm.name=dfedavg,dpsgd", "algorithm.lr=0.1,0.3"], [], seeds="0,1")
  batched = sweep.batch_runs(config, "experiments/configs/default.py", runs[1:], str(tmp_path),
                             cap=0)  # run 0 finished, say
  assert [len(b.outputs) for b in batched] == [3, 4]  # per algorithm: lr x seed
  first = batched[0]
  assert first.outputs == tuple(r.workdir for r in runs[1:4])
  assert first.command[3:] == ("--config=experiments/configs/default.py",
                               f"--runs={first.workdir}/runs.json", "--config.num_nodes=4")
  listed = json.loads(first.runs_json)
  assert listed[0] == {"workdir": runs[1].workdir,
                       "overrides": [list(o) for o in runs[1].overrides]}
  capped = sweep.batch_runs(config, "experiments/configs/default.py", runs, str(tmp_path), cap=3)
  assert [len(b.outputs) for b in capped] == [3, 1, 3, 1] and capped[1] is runs[3]
  assert capped[0].command[-1] == "--batch=3"
  assert sweep.batch_size_flag("auto") == 0 and sweep.batch_size_flag("none") is None
  with pytest.raises(ValueError, match="--batch must be auto, none or a number"):
    sweep.batch_size_flag("0")
