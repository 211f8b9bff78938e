"""Splitting a training set over nodes (numpy, host side, seeded).

`iid`: a random permutation cut into N near-equal shards.
`dirichlet`: label skew over classes (Hsu, Qi and Brown, "Measuring the Effects of Non-Identical
Data Distribution for Federated Visual Classification", 2019): for every class c, proportions
q_c ~ Dir(alpha·1_N) split that class's samples over the nodes; small alpha = strong skew, and
shard sizes vary widely. A node left without data gets a clear error rather than a silent empty
shard, unless `min_samples` = m > 0: then every node the split leaves with fewer than m samples
takes them, one at a time, from the largest shard of the moment (lowest index on ties; a
uniformly drawn sample of it), which lets many nodes share a small training set (e.g. 16,384
nodes on Fashion-MNIST's 60,000 samples, where alpha = 0.3 leaves 717 nodes empty) and moves
nothing when no node is short (the same shards as m = 0). FedML's version of the split
(fedml_core/non_iid_partition/noniid_partition.py, also shipped in the DisPFL repository but
not used by its loaders) adds a retry until every client has 10 samples and a cap on clients
already above n / N; neither is done here (a retry never succeeds when the mean shard is a few
samples).
`dirichlet_client`: label skew over clients, the split of DisPFL (Dai et al., "DisPFL:
Towards Communication-Efficient Personalized Federated Learning via Decentralized Sparse
Training", ICML 2022) and of its follow-up DA-DPFL (Long et al., 2024), whose code is DisPFL's:
`partition_data(..., partition='dir')` in fedml_api/data_preprocessing/cifar10/data_loader.py of
github.com/rong-dai/DisPFL (identical in github.com/EricLoong/da-dpfl; the cifar100 and
tiny_imagenet loaders repeat it). Every client gets the same number of samples and its own class
prior p_i ~ Dir(alpha·1_C); then, one sample at a time, a client that still has room is drawn
uniformly (drawing any client and redrawing while it is full), a class from its prior
(u ~ U[0, 1), the first c with u <= cumsum(p_i)[c]; redrawn while that class is used up), and the
next unused sample of that class is taken, without replacement (the class's indices in
increasing order, taken from the end). The size is the reference's
int(s / sum(s) * n) with s = N copies of exp(log(n / N)) (its lognormal with sigma = 0): floor(n / N),
or one less where that float normalisation rounds down, e.g. 499 per client for CIFAR-10's 50,000
over 100 clients; the n - N * size samples left over are used by nobody.
Deviations: the reference's RNG is numpy's global legacy state, here a seeded Generator drawn in
the same order (client, then class, per sample), so the procedure and its distribution are the
same but not the exact draws; the class count is the number of distinct labels (the reference
hard-codes 10 / 100 / 200 per loader). After MAX_CLASS_REDRAWS redraws of used-up classes for one
sample, the class is drawn directly from the client's prior restricted to the classes left
(renormalised), which is where the reference's redraw loop ends up in distribution (rejection
sampling is memoryless) but may take ~1/mass draws to get: at small alpha a prior puts ~1e-8 on
the classes left and the reference's loop runs for hours. With no mass left at all the reference
never ends; this raises a ValueError.
`pathological`: Path(k) (McMahan et al., 2017; the DFedSAM paper's Path setting): every node holds
exactly k distinct classes. The N*k (node, class) slots are spread evenly over the classes (a
random class order walked cyclically, k consecutive classes per node, nodes in random order so
that classes are not aligned with the graph), then each class's samples are split evenly at
random among the nodes that hold it.

`natural`: the dataset's own owner of every sample (`Dataset.node_ids_train`: writers, users,
devices), one node per distinct id.

`pack_shards` turns the list of index arrays into the padded `[N, L]` index matrix plus sizes
that the on-device sampler uses, so unequal shards need no Python loop at run time.
"""
from __future__ import annotations

import bisect
import math
from typing import Callable

import numpy as np


def iid(labels: np.ndarray, num_nodes: int, rng: np.random.Generator, **_) -> list[np.ndarray]:
  if len(labels) < num_nodes:
    raise ValueError(f"iid partition: {len(labels)} samples cannot give each of {num_nodes} "
                     "nodes at least one sample; use fewer nodes.")
  return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), num_nodes)]


def top_up(parts: list[list[int]], min_samples: int, rng: np.random.Generator) -> None:
  """In place: each node with fewer than `min_samples` samples (in node order) takes one at a
  time from the currently largest shard (lowest index on ties), a uniformly drawn sample of it."""
  sizes_N = np.array([len(p) for p in parts])
  if sizes_N.sum() < min_samples * len(parts):
    raise ValueError(f"data.min_samples={min_samples} needs {min_samples * len(parts)} samples for "
                     f"{len(parts)} nodes, but the training set has {sizes_N.sum()}; lower it.")
  for node in np.flatnonzero(sizes_N < min_samples):
    while sizes_N[node] < min_samples:
      donor = int(np.argmax(sizes_N))  # has > min_samples while some node has fewer
      parts[node].append(parts[donor].pop(int(rng.integers(sizes_N[donor]))))
      sizes_N[donor] -= 1
      sizes_N[node] += 1


def dirichlet(labels: np.ndarray, num_nodes: int, rng: np.random.Generator, *, alpha: float,
              min_samples: int = 0, **_) -> list[np.ndarray]:
  if not alpha > 0:
    raise ValueError(f"data.alpha must be > 0 for the dirichlet partition, got {alpha}.")
  if not (isinstance(min_samples, (int, np.integer)) and min_samples >= 0):
    raise ValueError(f"data.min_samples must be an integer >= 0, got {min_samples!r}.")
  parts: list[list[int]] = [[] for _ in range(num_nodes)]
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    q = rng.dirichlet(np.full(num_nodes, alpha))
    cuts = (np.cumsum(q)[:-1] * len(members)).astype(int)
    for node, chunk in enumerate(np.split(members, cuts)):
      parts[node].extend(chunk.tolist())
  if min_samples:
    top_up(parts, min_samples, rng)
  empty = [i for i, p in enumerate(parts) if not p]
  if empty:
    raise ValueError(
        f"dirichlet partition (alpha={alpha}) left {len(empty)} of {num_nodes} nodes without data "
        f"(e.g. node {empty[0]}); raise data.alpha, lower num_nodes or change the seed.")
  return [np.sort(np.asarray(p, np.int64)) for p in parts]


# Class redraws (the reference's `continue` on a used-up class) tried one by one before the
# same outcome is drawn directly; see dirichlet_client.
MAX_CLASS_REDRAWS = 100


def equal_client_size(num_samples: int, num_nodes: int) -> int:
  """The per-client size of DisPFL's partition_data: its float normalisation of N equal
  lognormal(log(n / N), sigma=0) draws, truncated, which may be floor(n / N) - 1."""
  share = np.full(num_nodes, np.exp(np.log(num_samples / num_nodes)))
  return int((share / np.sum(share) * num_samples).astype(int)[0])


def draw_class(rng: np.random.Generator, prior_C: np.ndarray, cumsum_C: list,
               left: list) -> int | None:
  """A class for one sample: from prior_C, redrawn while the class is used up (left[c] == 0).

  Redraws one by one as the reference does, up to MAX_CLASS_REDRAWS; then one draw from
  prior_C restricted to the classes left, which is the distribution the redraws end in.
  None if no class left has mass.
  """
  for _ in range(MAX_CLASS_REDRAWS):
    c = bisect.bisect_left(cumsum_C, rng.random())  # first c with u <= cumsum[c]
    c = 0 if c == len(cumsum_C) else c  # the reference's argmax of an all-False row
    if left[c] > 0:
      return c
  mass_C = np.cumsum(prior_C * (np.asarray(left) > 0))
  if not mass_C[-1] > 0:
    return None
  return int(np.searchsorted(mass_C, rng.random() * mass_C[-1], side="right"))


def dirichlet_client(labels: np.ndarray, num_nodes: int, rng: np.random.Generator, *,
                     alpha: float, **_) -> list[np.ndarray]:
  if not alpha > 0:
    raise ValueError(f"data.alpha must be > 0 for the dirichlet_client partition, got {alpha}.")
  size = equal_client_size(len(labels), num_nodes)
  if size < 1:
    raise ValueError(f"dirichlet_client partition: {len(labels)} samples cannot give each of "
                     f"{num_nodes} nodes the same positive number of samples; use fewer nodes.")
  classes = np.unique(labels)
  priors_NxC = rng.dirichlet(np.full(len(classes), alpha), size=num_nodes)
  cumsum = [list(np.cumsum(p)) for p in priors_NxC]
  members = [np.flatnonzero(labels == c) for c in classes]
  left = [len(m) for m in members]  # class c's unused samples are members[c][:left[c]]
  room = [size] * num_nodes
  parts: list[list[int]] = [[] for _ in range(num_nodes)]
  for _ in range(size * num_nodes):
    node = int(rng.integers(num_nodes))
    while room[node] <= 0:
      node = int(rng.integers(num_nodes))
    room[node] -= 1
    c = draw_class(rng, priors_NxC[node], cumsum[node], left)
    if c is None:
      raise ValueError(
          f"dirichlet_client partition (alpha={alpha}): node {node}'s class prior puts no mass "
          "on the classes not yet used up, so it cannot be filled; raise data.alpha, lower "
          "num_nodes or change the seed.")
    left[c] -= 1
    parts[node].append(int(members[c][left[c]]))
  return [np.sort(np.asarray(p, np.int64)) for p in parts]


def personal_test_split(train_counts_NxC: np.ndarray, y_test: np.ndarray,
                        rng: np.random.Generator) -> list[np.ndarray]:
  """Each node's own test set, drawn with its training label proportions (DisPFL's per-client
  test split, `load_partition_data_cifar10` in the data_loader.py cited above).

  With m = ceil(n_test / N), node i takes ceil(count_ic / sum_c count_ic * m) test samples of
  every class c (all of them if the class has fewer), a fresh random subset for every (node,
  class) pair: without replacement within a node, while different nodes may share test samples.
  Sizes are therefore about m, a little more from the ceilings. Returns index arrays into the
  test set, one per node, class by class as the reference concatenates them.
  """
  counts = np.asarray(train_counts_NxC)
  num_nodes, num_classes = counts.shape
  per_node = math.ceil(len(y_test) / num_nodes)
  by_class = [np.flatnonzero(y_test == c) for c in range(num_classes)]
  splits = []
  for i in range(num_nodes):
    total = int(counts[i].sum())
    chosen = []
    for c in range(num_classes):
      take = math.ceil(int(counts[i, c]) / total * per_node)
      chosen.append(by_class[c][rng.permutation(len(by_class[c]))[:take]])
    splits.append(np.concatenate(chosen).astype(np.int64))
  return splits


def class_counts(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
  """[N, C] number of samples of each class in each node's shard."""
  return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])


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


def natural(labels: np.ndarray, num_nodes: int, rng: np.random.Generator, *,
            node_ids=None, **_) -> list[np.ndarray]:
  """Every sample to the node the dataset says it belongs to (a writer, user or device, as in
  LEAF's FEMNIST or Shakespeare): node k holds the samples of the k-th smallest distinct id."""
  if node_ids is None:
    raise ValueError("data.partition='natural' needs a dataset that names each training sample's "
                     "node (node_ids_train, from a data.name import path); built-in datasets "
                     "have none: use iid, dirichlet, dirichlet_client or pathological.")
  distinct, owner = np.unique(np.asarray(node_ids), return_inverse=True)
  if len(distinct) != num_nodes:
    raise ValueError(f"data.partition='natural': the dataset's node_ids_train name "
                     f"{len(distinct)} distinct nodes but num_nodes={num_nodes}; set "
                     f"num_nodes={len(distinct)}.")
  order = np.argsort(owner, kind="stable")
  return np.split(order.astype(np.int64), np.cumsum(np.bincount(owner, minlength=num_nodes))[:-1])


PARTITIONS: dict[str, Callable[..., list[np.ndarray]]] = {
    "iid": iid, "dirichlet": dirichlet, "dirichlet_client": dirichlet_client,
    "pathological": pathological, "natural": natural}


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
