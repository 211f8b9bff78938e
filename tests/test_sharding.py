"""The node axis sharded over devices (dfl/sharding.py).

Multi-device runs need a CPU backend with several devices, fixed when JAX starts, so they run in
subprocesses (tests/sharded_runs.py): one with 8 forced devices for every single-process check,
and two processes of 2 devices each for the multi-host run.

Tolerance: sharded runs are not bitwise equal to the 1-device run. Per-node training is the same
program, but gossip `W @ x` becomes an all-gather then a [N/D, N] @ [N, P] product per device
instead of one [N, N] @ [N, P] product, and XLA's CPU dot kernels may accumulate a different
shape in a different order; reductions over nodes (losses, consensus distance) become partial
sums plus an all-reduce. Observed differences are a few float32 ulps (~1e-8 on parameters of
size ~0.1 after 4 rounds); the tests allow 1e-5 absolute on parameters and 1e-5 relative on
metrics, far below any effect of a wrong exchange (a missed or duplicated neighbour changes
parameters by ~1e-2 here).
"""
import fcntl
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from dfl.algorithms import ALGORITHMS
from dfl.config_checks import validate_config
from dfl.sharding import collectives_used, make_node_mesh
from tests.conftest import REPO, tiny_config

WORKER = str(REPO / "tests" / "sharded_runs.py")
# Algorithms checked sharded vs unsharded: every registered one of these (D-PSGD on 2, 4 and 8
# devices, the others on 8).
CHECKED = [a for a in ("dpsgd", "dfedavg", "fedavg", "gossip", "dfedsam", "modest", "choco",
                       "push_sum", "gradient_tracking", "exact_diffusion", "qgm")
           if a in ALGORITHMS]
PARAM_ATOL, METRIC_RTOL = 1e-5, 1e-5


def _result(stdout: str) -> dict:
  lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
  assert lines, f"worker printed no result:\n{stdout[-3000:]}"
  return json.loads(lines[-1][len("RESULT "):])


def _run(args, **kwargs):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, WORKER, *args], cwd=REPO, env=env, text=True,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


@pytest.fixture(scope="session")
def sharded(tmp_path_factory):
  """The 8-device worker's results, computed once even when pytest-xdist spreads this file's
  tests over several processes (they share the parent of the base temp dir)."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):  # basetemp is per worker; its parent per session
    root = root.parent
  with open(root / "sharded.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    cached = root / "sharded.json"
    if not cached.exists():
      out = root / "sharded"
      out.mkdir(exist_ok=True)
      proc = _run([str(out), *CHECKED], timeout=1200)
      assert proc.returncode == 0, proc.stdout[-5000:]
      cached.write_text(json.dumps(_result(proc.stdout)))
    return json.loads(cached.read_text())


def _assert_records_close(got: list, want: list):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert g["round"] == w["round"]
    for key in ("test_accuracy", "test_loss", "test_accuracy_local_mean", "train_loss"):
      if w[key] is not None:
        np.testing.assert_allclose(g[key], w[key], rtol=METRIC_RTOL, err_msg=key)
    np.testing.assert_allclose(g["consensus_distance"], w["consensus_distance"], rtol=METRIC_RTOL,
                               atol=1e-9)
    for key in ("comm_transfers", "comm_bytes", "comm_bytes_max_node"):
      assert g[key] == w[key], key


@pytest.mark.parametrize("algorithm", CHECKED)
def test_sharded_run_matches_single_device(sharded, algorithm):
  runs = sharded["equivalence"][algorithm]
  assert "8" in runs and (algorithm != "dpsgd" or {"2", "4"} <= set(runs))
  for devices, run in runs.items():
    assert run["max_param_diff"] <= PARAM_ATOL, (devices, run)
    assert run["loss_diff"] <= METRIC_RTOL, (devices, run)
    assert run["sent_equal"], devices


def test_node_axis_sharded_everything_else_replicated(sharded):
  for devices, run in sharded["equivalence"]["dpsgd"].items():
    assert run["state_devices"] == int(devices)
    assert run["state_spec"] == run["indices_spec"] == "P('nodes',)"
    assert run["x_replicated"]
    assert run["compilations"] == 1  # the state keeps its sharding from chunk to chunk


def test_gossip_across_shards_is_an_all_gather(sharded):
  c = sharded["collectives"]
  assert c["dense_1"] == {}  # one device: no communication at all
  # 8 devices: models are all-gathered before W @ x (dense) or the neighbour gather (sparse);
  # the all-reduces are node sums (loss mean, messages sent per node).
  for form in ("dense_8", "sparse_8"):
    assert c[form].get("all-gather", 0) >= 1, c
    assert set(c[form]) <= {"all-gather", "all-reduce"}, c


def test_indivisible_and_too_many_devices_are_clear_errors(sharded):
  errors = sharded["errors"]
  assert "num_nodes=6 is not divisible by the 4 devices" in errors["indivisible"]
  assert "mesh.devices in [1, 2, 3, 6]" in errors["indivisible"]
  assert "mesh.devices=16 but this process has 8 cpu device(s)" in errors["too_many"]


def test_checkpoint_saved_on_8_devices_restores_on_2(sharded):
  ckpt = sharded["checkpoint"]
  assert ckpt["restored_diff"] == 0.0
  assert ckpt["restored_devices"] == 2 and ckpt["restored_spec"] == "P('nodes',)"
  assert ckpt["continued_diff"] <= PARAM_ATOL


def test_driver_outputs_same_on_1_and_4_devices(sharded):
  _assert_records_close(sharded["full_run"]["4"], sharded["full_run"]["1"])


def test_multihost_run_matches_single_process(sharded, tmp_path):
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  # One workdir for both, as on a cluster's shared filesystem: Orbax writes each checkpoint
  # from all processes (only process 0 writes the other outputs).
  workdirs = [tmp_path / "run"] * 2
  procs = [subprocess.Popen([sys.executable, WORKER, "multihost", str(i), "2", str(port),
                             str(workdirs[i])], cwd=REPO, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-5000:]
  for i, out in enumerate(outputs):
    assert _result(out) == {"process_index": i, "device_count": 4, "local_device_count": 2}
  with open(workdirs[0] / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  _assert_records_close(records, sharded["full_run"]["4"])
  # Only process 0 writes outputs (len(records) above: no line twice) and reports.
  assert ["final test accuracy" in out for out in outputs] == [True, False]
  assert any(p.name.isdigit() for p in (workdirs[0] / "checkpoints").iterdir())


def test_more_devices_than_available_in_process():
  with pytest.raises(ValueError, match=r"mesh.devices=64 but this process has"):
    make_node_mesh(64, 64)


def test_config_rejects_negative_devices():
  with pytest.raises(ValueError, match=r"mesh.devices must be an integer >= 0"):
    validate_config(tiny_config(mesh__devices=-1))


def test_collectives_used_counts_ops():
  hlo = ("%all-gather.1 = f32[8,4] all-gather(%p), dimensions={0}\n"
         "%ag = f32[8,4] all-gather-start(%q)\n%all-reduce.2 = f32[] all-reduce(%r)\n"
         "%fusion = f32[8] fusion(%all-gather.1)")
  assert collectives_used(hlo) == {"all-gather": 2, "all-reduce": 1}
