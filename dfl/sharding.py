"""Scale-out: the node axis sharded over the devices of one machine or of many hosts.

The simulation state has one leading node axis N on every leaf (DESIGN.md). Sharding it is the
whole story: a 1-D `jax.sharding.Mesh` with axis `nodes` spans the chosen devices, every
node-axis array (parameters, optimizer state, the shard index matrix and sizes) is placed with
`NamedSharding(mesh, P('nodes'))` so each device holds N / D consecutive nodes, and everything
else (the training set x, y; the mixing operator; keys; round indices) is replicated. The jitted
chunk of rounds then runs as one SPMD program partitioned by XLA's GSPMD from those shardings:
vmapped local training needs no communication, and gossip across device boundaries becomes the
collectives XLA chooses (see `collectives_used`; for `W @ x` it all-gathers x, then each device
multiplies its rows of W locally). The numerics per node are those of the single-device program
up to float reassociation in reductions across nodes, so runs agree within float tolerance.

Multi-host (JAX's multi-controller runtime, Bradbury et al., "JAX: composable transformations of
Python+NumPy programs", and the GSPMD paper, Xu et al., 2021): every process runs the same
program on the same config; `initialize_distributed` calls `jax.distributed.initialize`, whose
arguments come from the config or, left empty, from the environment (TPU pod metadata, SLURM,
Open MPI, or JAX_COORDINATOR_ADDRESS). Each process places only its own nodes' rows of the shard
matrix on its devices (`jax.make_array_from_callback`); the training set itself is small and
replicated. Round metrics are constrained to be replicated (evaluation figures are scalars,
replicated anyway), so every process can read them; only process 0 writes files and logs.

Node count not divisible by the device count is an error (not padding): padded phantom nodes
would take part in gossip and node means and change the algorithm.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dfl.local import NodeData

NODE_AXIS = "nodes"
PyTree = Any


def initialize_distributed(mesh_config) -> None:
  """Starts JAX's distributed runtime when `mesh.distributed` is set (idempotent).

  Empty `coordinator_address` / `num_processes` / `process_id` are detected by JAX from the
  cluster environment (Cloud TPU pods, SLURM, Open MPI) or JAX_COORDINATOR_ADDRESS. Must run
  before any other JAX computation in the process.
  """
  if not mesh_config.distributed or jax.distributed.is_initialized():
    return
  jax.distributed.initialize(coordinator_address=mesh_config.coordinator_address or None,
                             num_processes=mesh_config.num_processes,
                             process_id=mesh_config.process_id)


def is_main_process() -> bool:
  """True on the one process that writes files, logs and shows progress."""
  return jax.process_index() == 0


def make_node_mesh(devices: int, num_nodes: int) -> Mesh:
  """A 1-D mesh over `devices` local devices of every process (0 = all of them).

  Raises:
    ValueError: `devices` is negative or more than a process has, or the total device count
      does not divide `num_nodes`.
  """
  local = jax.local_device_count()
  if not isinstance(devices, int) or devices < 0 or devices > local:
    raise ValueError(f"mesh.devices={devices!r} but this process has {local} "
                     f"{jax.default_backend()} device(s); valid: 0 (all) or 1..{local}.")
  per_process = devices or local
  total = per_process * jax.process_count()
  if num_nodes % total:
    valid = [d for d in range(1, local + 1) if num_nodes % (d * jax.process_count()) == 0]
    raise ValueError(
        f"num_nodes={num_nodes} is not divisible by the {total} devices of the mesh "
        f"(mesh.devices={devices} x {jax.process_count()} process(es)); each device must hold "
        f"the same number of nodes. Use a num_nodes that is a multiple of {total}, or "
        f"mesh.devices in {valid}.")
  if per_process == local:  # all devices: let JAX order them for the interconnect
    return jax.make_mesh((total,), (NODE_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
  chosen = [d for p in range(jax.process_count())
            for d in [d for d in jax.devices() if d.process_index == p][:per_process]]
  return Mesh(np.array(chosen), (NODE_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


@dataclasses.dataclass(frozen=True)
class NodePlacement:
  """Where the node axis lives: shardings for the state and data, and wrappers that keep them.

  A leaf is node-sharded when its leading axis has length `num_nodes`, replicated otherwise.
  """
  mesh: Mesh
  num_nodes: int

  @property
  def node_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, P(NODE_AXIS))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def sharding_of(self, leaf) -> NamedSharding:
    shape = np.shape(leaf)
    return self.node_sharding if shape and shape[0] == self.num_nodes else self.replicated

  def shardings(self, tree: PyTree) -> PyTree:
    return jax.tree.map(self.sharding_of, tree)

  def constrain(self, tree: PyTree) -> PyTree:
    """Inside jit: pins every leaf to its node / replicated sharding."""
    return jax.lax.with_sharding_constraint(tree, self.shardings(tree))

  def place(self, tree: PyTree) -> PyTree:
    """Host or device arrays -> global arrays; each process transfers only its own rows."""
    def put(leaf):
      if isinstance(leaf, jax.core.Tracer):  # inside a transformation (e.g. vmap over seeds)
        return leaf
      if isinstance(leaf, jax.Array) and leaf.sharding == self.sharding_of(leaf):
        return leaf
      if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return jax.device_put(leaf, self.sharding_of(leaf))  # already global: reshard on device
      host = np.asarray(leaf)
      return jax.make_array_from_callback(host.shape, self.sharding_of(leaf),
                                          lambda index: host[index])
    return jax.tree.map(put, tree)

  def node_data(self, x, y, indices_NxL, sizes_N) -> NodeData:
    """The training set replicated, each node's shard row on the device that trains it."""
    return NodeData(self.place_replicated(x), self.place_replicated(y),
                    self.place(indices_NxL), self.place(sizes_N))

  def place_replicated(self, array):
    host = np.asarray(array)
    return jax.make_array_from_callback(host.shape, self.replicated, lambda index: host[index])

  def build(self, fn: Callable, *args, cache_key=None) -> PyTree:
    """fn(*args) computed under jit straight into the sharded layout (each device builds its
    own nodes, nothing of size N is materialised on one device). With a hashable `cache_key`
    naming what fn computes, the compiled program is kept for the next build of that key (the
    runs of a batch initialise the same model: one compilation, not one per run)."""
    if cache_key is None:
      return jax.jit(lambda *a: self.constrain(fn(*a)))(*args)
    key = (cache_key, self.mesh)
    if key not in _BUILDERS:
      _BUILDERS[key] = jax.jit(lambda *a: self.constrain(fn(*a)))
    return _BUILDERS[key](*args)

  def runner(self, run_chunk: Callable) -> Callable:
    """run_chunk (from `dfl.engine`) as one SPMD program: state stays node-sharded across
    chunks (so nothing recompiles), metrics come back replicated (readable on every host)."""
    def sharded(state, data, train_key, rounds_R, mixing, per_round_mixing):
      state, metrics = run_chunk(state, data, train_key, rounds_R, mixing, per_round_mixing)
      return self.constrain(state), jax.lax.with_sharding_constraint(metrics, self.replicated)
    jitted = jax.jit(sharded, static_argnums=(5,), donate_argnums=(0,))

    def run(state, data, train_key, rounds_R, mixing, per_round_mixing):
      return jitted(self.place(state), data, train_key, rounds_R, mixing, per_round_mixing)
    run.jitted = jitted  # for HLO inspection (run.jitted.lower(...).compile().as_text())
    run._cache_size = jitted._cache_size  # compilation count, as on any jitted function
    return run


_BUILDERS: dict = {}  # NodePlacement.build's compiled programs by cache_key


def make_placement(mesh_config, num_nodes: int) -> NodePlacement:
  """Starts the distributed runtime if asked, then builds the node mesh from the config."""
  initialize_distributed(mesh_config)
  return NodePlacement(make_node_mesh(mesh_config.devices, num_nodes), num_nodes)


_COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
                "collective-permute")


def collectives_used(compiled_text: str) -> dict[str, int]:
  """Counts of each XLA collective op in compiled HLO text (`jit(f).lower(...).compile()
  .as_text()`): which communication the partitioner actually chose."""
  counts = {}
  for op in _COLLECTIVES:
    n = len(re.findall(rf"\b{op}(?:-start)?\(", compiled_text))
    if n:
      counts[op] = n
  return counts
