"""Sharding checks in fresh processes with forced CPU devices (tests/test_sharding.py runs them).

The device count of the CPU backend is fixed when JAX starts (XLA_FLAGS), hence subprocesses:

    python tests/sharded_runs.py OUT_DIR ALGORITHM...    8 devices; prints one RESULT JSON line
    python tests/sharded_runs.py multihost PROCESS_ID NUM_PROCESSES PORT WORKDIR
        one of NUM_PROCESSES processes (2 devices each) of a multi-host run on localhost
"""
import os
import sys

MULTIHOST = sys.argv[1] == "multihost"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
                           + ("2" if MULTIHOST else "8"))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from dfl import train  # noqa: E402
from dfl.sharding import collectives_used  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

DEVICE_COUNTS = (1, 2, 4, 8)
NUM_NODES = 8


def config(algorithm: str, devices: int):
  return tiny_config(num_nodes=NUM_NODES, mesh__devices=devices, algorithm__name=algorithm,
                     algorithm__client_fraction=0.5)


_EXPERIMENTS = {}


def experiment(algorithm: str, devices: int):
  """Built once per (algorithm, devices): compilation dominates the run time of this file."""
  if (algorithm, devices) not in _EXPERIMENTS:
    _EXPERIMENTS[algorithm, devices] = train.build_experiment(config(algorithm, devices))
  return _EXPERIMENTS[algorithm, devices]


def run_chunks(exp, state, start: int, chunks: int, length: int = 2):
  mixing = train.mixing_operator(exp.topology, 0, sparse=False)
  for c in range(chunks):
    rounds_R = jnp.arange(start + c * length, start + (c + 1) * length, dtype=jnp.int32)
    state, metrics = exp.run_chunk(state, exp.data, exp.train_key, rounds_R, mixing, False)
  return state, metrics


def host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def max_diff(a, b) -> float:
  return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def equivalence(algorithm: str, device_counts) -> dict:
  """Params and metrics after 4 rounds on each device count, against the 1-device run."""
  out = {}
  for devices in device_counts:
    exp = experiment(algorithm, devices)
    state, metrics = run_chunks(exp, exp.algorithm.init(exp.init_params), 0, chunks=2)
    leaf = jax.tree.leaves(state.params)[0]
    out[devices] = {
        "params": host(state.params), "loss": float(np.mean(metrics.loss)),
        "sent": np.asarray(metrics.sent_N).tolist(),
        "state_devices": len(leaf.sharding.device_set),
        "state_spec": str(leaf.sharding.spec),
        "indices_spec": str(exp.data.indices.sharding.spec),
        "x_replicated": bool(exp.data.x.sharding.is_fully_replicated),
        "compilations": exp.run_chunk.jitted._cache_size(),
    }
  ref = out[1]
  return {str(d): {"max_param_diff": max_diff(r["params"], ref["params"]),
                   "loss_diff": abs(r["loss"] - ref["loss"]), "sent_equal": r["sent"] == ref["sent"],
                   **{k: r[k] for k in ("state_devices", "state_spec", "indices_spec",
                                        "x_replicated", "compilations")}}
          for d, r in out.items()}


def collectives(devices: int, form: str) -> dict:
  exp = experiment("dpsgd", devices)
  state = exp.algorithm.init(exp.init_params)
  mixing = train.mixing_operator(exp.topology, 0, sparse=form == "sparse")
  text = exp.run_chunk.jitted.lower(state, exp.data, exp.train_key,
                                    jnp.arange(2, dtype=jnp.int32), mixing, False).compile().as_text()
  return collectives_used(text)


def checkpoint_across_device_counts(directory: str) -> dict:
  """Saves the 8-device state with Orbax, restores it onto 2 devices, continues both."""
  exp8 = experiment("dpsgd", 8)
  state8, _ = run_chunks(exp8, exp8.algorithm.init(exp8.init_params), 0, chunks=1)
  path = os.path.join(directory, "ckpt")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, state8)
  exp2 = experiment("dpsgd", 2)
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state8, exp2.placement.shardings(state8))
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(path, target)
  leaf = jax.tree.leaves(restored.params)[0]
  restored_diff = max_diff(host(restored), host(state8))
  on_devices = len(leaf.sharding.device_set)
  spec = str(leaf.sharding.spec)
  continued2, _ = run_chunks(exp2, restored, 2, chunks=1)
  continued8, _ = run_chunks(exp8, state8, 2, chunks=1)
  return {"restored_diff": restored_diff, "restored_devices": on_devices, "restored_spec": spec,
          "continued_diff": max_diff(host(continued2.params), host(continued8.params))}


def errors() -> dict:
  messages = {}
  for name, c in {"indivisible": tiny_config(num_nodes=6, mesh__devices=4),
                  "too_many": tiny_config(num_nodes=8, mesh__devices=16)}.items():
    try:
      train.build_experiment(c)
      messages[name] = None
    except ValueError as e:
      messages[name] = str(e)
  return messages


def full_run(directory: str, devices: int) -> list:
  workdir = os.path.join(directory, f"run{devices}")
  train.train_and_evaluate(config("dfedavg", devices), workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def main(out_dir: str, algorithms: list[str]):
  """dpsgd on every device count; the other algorithms on 1 and 8 devices (compile time)."""
  result = {"device_count": jax.device_count(), "errors": errors(),
            "equivalence": {a: equivalence(a, DEVICE_COUNTS if a == "dpsgd" else (1, 8))
                            for a in algorithms},
            "collectives": {"dense_1": collectives(1, "dense"), "dense_8": collectives(8, "dense"),
                            "sparse_8": collectives(8, "sparse")},
            "checkpoint": checkpoint_across_device_counts(out_dir),
            "full_run": {d: full_run(out_dir, d) for d in (1, 4)}}
  print("RESULT " + json.dumps(result), flush=True)


def multihost(process_id: int, num_processes: int, port: int, workdir: str):
  """The dfedavg run of `full_run`, as one process of a multi-host job (all local devices)."""
  c = config("dfedavg", 0)
  c.mesh.distributed = True
  c.mesh.coordinator_address = f"localhost:{port}"
  c.mesh.num_processes = num_processes
  c.mesh.process_id = process_id
  train.train_and_evaluate(c, workdir)
  print("RESULT " + json.dumps({"process_index": jax.process_index(),
                                "device_count": jax.device_count(),
                                "local_device_count": jax.local_device_count()}), flush=True)


if __name__ == "__main__":
  if MULTIHOST:
    multihost(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
  else:
    main(sys.argv[1], sys.argv[2:])
