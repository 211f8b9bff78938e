"""Splitting a training set over nodes (numpy, host side, seeded).

`iid`: a random permutation cut into N near-equal shards.
`dirichlet`: label skew (Hsu et al., 2019): for every class c, proportions q_c ~ Dir(alpha·1_N)
split that class's samples over the nodes; small alpha = strong skew. A node left without data
gets a clear error rather than a silent empty shard.
`pathological`: Path(k) (McMahan et al., 2017; the DFedSAM paper's Path setting): every node holds
exactly k distinct classes. The N*k (node, class) slots are spread evenly over the classes (a
random class order walked cyclically, k consecutive classes per node, nodes in random order so
that classes are not aligned with the graph), then each class's samples are split evenly at
random among the nodes that hold it.

`pack_shards` turns the list of index arrays into the padded `[N, L]` index matrix plus sizes
that the on-device sampler uses, so unequal shards need no Python loop at run time.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def iid(labels: np.ndarray, num_nodes: int, rng: np.random.Generator, **_) -> list[np.ndarray]:
  if len(labels) < num_nodes:
    raise ValueError(f"iid partition: {len(labels)} samples cannot give each of {num_nodes} "
                     "nodes at least one sample; use fewer nodes.")
  return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), num_nodes)]


def dirichlet(labels: np.ndarray, num_nodes: int, rng: np.random.Generator, *, alpha: float,
              **_) -> list[np.ndarray]:
  if not alpha > 0:
    raise ValueError(f"data.alpha must be > 0 for the dirichlet partition, got {alpha}.")
  parts: list[list[int]] = [[] for _ in range(num_nodes)]
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    q = rng.dirichlet(np.full(num_nodes, alpha))
    cuts = (np.cumsum(q)[:-1] * len(members)).astype(int)
    for node, chunk in enumerate(np.split(members, cuts)):
      parts[node].extend(chunk.tolist())
  empty = [i for i, p in enumerate(parts) if not p]
  if empty:
    raise ValueError(
        f"dirichlet partition (alpha={alpha}) left {len(empty)} of {num_nodes} nodes without data "
        f"(e.g. node {empty[0]}); raise data.alpha, lower num_nodes or change the seed.")
  return [np.sort(np.asarray(p, np.int64)) for p in parts]


def pathological(labels: np.ndarray, num_nodes: int, rng: np.random.Generator, *,
                 classes_per_node: int, **_) -> list[np.ndarray]:
  classes = np.unique(labels)
  k = classes_per_node
  if not (isinstance(k, (int, np.integer)) and 1 <= k <= len(classes)):
    raise ValueError(f"data.classes_per_node must be an integer in [1, {len(classes)}] (the "
                     f"number of classes) for the pathological partition, got {k!r}.")
  class_order = rng.permutation(classes)
  node_order = rng.permutation(num_nodes)
  # Node node_order[j] takes classes j*k .. j*k+k-1 (mod C): k distinct ones since k <= C.
  held = {int(node_order[j]): class_order[(j * k + np.arange(k)) % len(classes)]
          for j in range(num_nodes)}
  parts: list[list[np.ndarray]] = [[] for _ in range(num_nodes)]
  for c in classes:
    owners = [i for i in range(num_nodes) if c in held[i]]
    if not owners:
      continue  # fewer slots than classes (N * k < C): this class is left out
    members = rng.permutation(np.flatnonzero(labels == c))
    if len(members) < len(owners):
      raise ValueError(f"pathological partition: class {c} has {len(members)} samples but "
                       f"{len(owners)} nodes must hold it (classes_per_node={k}, {num_nodes} "
                       "nodes); lower data.classes_per_node or num_nodes.")
    for node, chunk in zip(owners, np.array_split(members, len(owners))):
      parts[node].append(chunk)
  return [np.sort(np.concatenate(p)) for p in parts]


PARTITIONS: dict[str, Callable[..., list[np.ndarray]]] = {
    "iid": iid, "dirichlet": dirichlet, "pathological": pathological}


def partition(labels: np.ndarray, num_nodes: int, scheme: str, *, seed: int, **options) -> list[np.ndarray]:
  """Returns one array of training-set indices per node."""
  if scheme not in PARTITIONS:
    raise ValueError(f"Unknown data.partition={scheme!r}; valid: {sorted(PARTITIONS)}.")
  return PARTITIONS[scheme](labels, num_nodes, np.random.default_rng(seed), **options)


def pack_shards(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Pads per-node index arrays to a matrix.

  Returns (indices [N, L] int32, sizes [N] int32), L = the largest shard. Padding repeats the
  node's own indices, so even an unmasked read of a padded slot stays inside the node's data.
  """
  sizes = np.array([len(p) for p in parts], np.int32)
  width = int(sizes.max())
  indices = np.stack([np.resize(p, width) for p in parts]).astype(np.int32)
  return indices, sizes
