"""Splitting a training set over nodes (numpy, host side, seeded).

`iid`: a random permutation cut into N near-equal shards.
`dirichlet`: label skew (Hsu et al., 2019): for every class c, proportions q_c ~ Dir(alpha·1_N)
split that class's samples over the nodes; small alpha = strong skew. A node left without data
gets a clear error rather than a silent empty shard.

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


PARTITIONS: dict[str, Callable[..., list[np.ndarray]]] = {"iid": iid, "dirichlet": dirichlet}


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
