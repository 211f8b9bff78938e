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
