"""The benchmark's pieces run and check themselves on a tiny size (no timing is asserted)."""
import pytest

from experiments import bench


def test_gossip_microbenchmark_runs_and_dense_equals_sparse():
  rows = bench.run_gossip([16], dim=8, dense_max=16, repeats=1)  # asserts dense == sparse inside
  assert {r["graph"] for r in rows} == {"ring", "torus", "exponential"}
  assert all(r["sparse_s"] > 0 and r["dense_s"] > 0 for r in rows)


def test_unknown_workload_is_named(capsys):
  with pytest.raises(SystemExit):
    bench.main(["--workloads", "W9"])
  assert "'W9'" in capsys.readouterr().err


def _result(name, round_s, torch_s=None, **extra):
  r = {"workload": name, "round_s": {"median": round_s}, "mfu": {"median": 0.4},
       "eval_share": 0.05, "peak_rss_gib": 1.0, **extra}
  if torch_s is not None:
    r["torch"] = {"round_s": torch_s}
  return r


def test_targets_table_says_met_and_missed_from_the_ratios():
  by = {"W1": _result("W1", 0.1, 0.3, user={"round_s": 0.125}),  # 3.0x training, 2.4x user
        "W4": _result("W4", 0.05, 0.4),  # 8x < 10x
        "W2": _result("W2", 4.0, 5.0, eval_share=0.12),  # 1.25x; share 12% > 10%
        "W5h": _result("W5h", 4.0), "W5": _result("W5", 8.6, peak_rss_gib=4.8)}  # 2.15x growth
  rows = {row[0]: (row[2], row[3]) for row in bench.target_rows(by)}
  assert rows["W1 vs the PyTorch loop, training only"] == ("3.00x (0.100 vs 0.300)", "met")
  assert rows["W1 vs the PyTorch loop, a user's run incl. evaluation"][1] == "missed"
  assert rows["W1 MFU"] == ("40%", "missed")
  assert rows["W4 vs the PyTorch loop"][1] == "missed"
  assert rows["W2 (CNN) vs the PyTorch loop per node-step"][1] == "met"
  assert rows["evaluation share of a default run (every 10 rounds)"] == (
      "W1 5.0%, W2 12.0%, W4 5.0%", "missed")
  assert rows["W5 (16,384 nodes) peak memory"] == ("4.80 GiB", "met")
  assert rows["W5 s/round growth, 8,192 -> 16,384 nodes"][1] == "missed"
