"""Which nodes are Byzantine, and the poisoned data of label-flipping attackers.

The Byzantine set is drawn once per run from its own random stream (dfl/experiment.py's
_ADVERSARY_STREAM, or adversary.seed), so changing it never shifts the partition, the graph or
the training keys:

    f = adversary.count, else round(adversary.fraction * num_nodes)
    placement random          f distinct nodes, uniformly (numpy Generator.choice)
    placement highest_degree  the f nodes with most neighbours in the graph of round 0 (ties:
                              lower id first)
    placement ids             exactly adversary.ids
    sybil_nodes S > 0         attack=sybil only: the S last nodes are Sybil identities added to
                              the honest graph (built on the first N - S nodes), each linked to
                              sybil_degree honest nodes drawn by seed (topologies'
                              attached_nodes); f = S

label_flip (Tolpegin et al. 2020; the reference's LabelFlippingWorker, y -> 9 - y): an
attacker's shard is replaced by copies of its samples with labels y -> C - 1 - y, appended to the
training set, so an honest node sharing a sample (overlapping partitions) still sees its label.
"""
from __future__ import annotations

import numpy as np

PLACEMENTS = ("random", "highest_degree", "ids")


def sybil_nodes(section) -> int:
  """S, the Sybil identities attached to the honest graph as extra nodes (0: none)."""
  return 0 if section is None else int(section.get("sybil_nodes", 0) or 0)


def attached_options(section) -> dict:
  """The topology options that attach the Sybil identities (none without them)."""
  s = sybil_nodes(section)
  return {"attached_nodes": s, "attached_degree": int(section.sybil_degree)} if s else {}


def num_byzantine(section, num_nodes: int) -> int:
  if section is None or section.attack == "none":
    return 0
  if sybil_nodes(section):
    return sybil_nodes(section)
  if section.placement == "ids":
    return len(tuple(section.ids))
  if section.count is not None:
    return int(section.count)
  return int(round(float(section.fraction) * num_nodes))


def degrees(indices_NxK: np.ndarray, weights_NxK: np.ndarray) -> np.ndarray:
  """[N] neighbours of each node (j != i with w_ij != 0) in the neighbour form."""
  idx, w = np.asarray(indices_NxK), np.asarray(weights_NxK)
  return ((w != 0) & (idx != np.arange(len(idx))[:, None])).sum(axis=1)


def choose_byzantine(section, num_nodes: int, degree_N: np.ndarray, seed: int) -> np.ndarray:
  """[N] bool mask of the Byzantine nodes."""
  f = num_byzantine(section, num_nodes)
  mask = np.zeros(num_nodes, bool)
  if sybil_nodes(section):
    mask[num_nodes - f:] = True  # the attached identities
  elif section.placement == "ids":
    mask[np.asarray(tuple(section.ids), np.int64)] = True
  elif section.placement == "highest_degree":
    order = np.lexsort((np.arange(num_nodes), -np.asarray(degree_N)))
    mask[order[:f]] = True
  else:
    mask[np.random.default_rng(seed).choice(num_nodes, size=f, replace=False)] = True
  return mask


def poison_labels(x: np.ndarray, y: np.ndarray, shards: list, byzantine_N: np.ndarray,
                  num_classes: int):
  """(x', y', shards'): the attackers' samples appended with flipped labels, their shards
  pointing at the copies; honest shards and the original samples unchanged."""
  attackers = np.flatnonzero(byzantine_N)
  if attackers.size == 0:
    return x, y, shards
  positions = np.unique(np.concatenate([np.asarray(shards[i]) for i in attackers]))
  n = len(y)
  x2 = np.concatenate([x, x[positions]])
  y2 = np.concatenate([y, (num_classes - 1 - y[positions]).astype(y.dtype)])
  out = [n + np.searchsorted(positions, np.asarray(s)) if byzantine_N[i] else s
         for i, s in enumerate(shards)]
  return x2, y2, out


def check_section(section, num_nodes: int) -> None:
  """Raises ValueError naming the bad field of the `adversary` section."""
  from dfl.adversary.attacks import ATTACKS, SYBIL_ATTACKS
  if section is None:
    return
  if section.attack not in ATTACKS:
    raise ValueError(f"Unknown adversary.attack={section.attack!r}; valid: {list(ATTACKS)}.")
  if section.placement not in PLACEMENTS:
    raise ValueError(f"Unknown adversary.placement={section.placement!r}; valid: "
                     f"{list(PLACEMENTS)}.")
  if section.sybil_attack not in SYBIL_ATTACKS:
    raise ValueError(f"Unknown adversary.sybil_attack={section.sybil_attack!r}; valid: "
                     f"{list(SYBIL_ATTACKS)}.")
  fraction, count, ids = float(section.fraction), section.count, tuple(section.ids)
  if not 0 <= fraction < 1:
    raise ValueError(f"adversary.fraction must be in [0, 1) (at least one honest node), got "
                     f"{section.fraction}.")
  if count is not None and not (isinstance(count, int) and 0 <= count < num_nodes):
    raise ValueError(f"adversary.count must be an integer in [0, num_nodes={num_nodes}), got "
                     f"{count!r}.")
  if section.attack == "none":
    if fraction or count or ids or section.placement != "random" or sybil_nodes(section):
      raise ValueError(f"adversary.attack='none' but adversary.fraction={section.fraction}, "
                       f"count={count}, ids={ids}, placement={section.placement!r}, sybil_nodes="
                       f"{sybil_nodes(section)}: choose an "
                       f"attack (valid: {list(ATTACKS[1:])}) or leave them unset.")
    return
  s = sybil_nodes(section)
  if s:
    if section.attack != "sybil":
      raise ValueError(f"adversary.sybil_nodes={s} adds Sybil identities, which only "
                       f"adversary.attack='sybil' has, not {section.attack!r}.")
    if fraction or count is not None or ids or section.placement != "random":
      raise ValueError(f"adversary.sybil_nodes={s} makes the {s} attached nodes the Byzantine "
                       f"ones; leave adversary.fraction, count, ids and placement unset.")
    if not (isinstance(s, int) and 0 < s <= num_nodes - 2):
      raise ValueError(f"adversary.sybil_nodes must be an integer in [0, num_nodes - 2 = "
                       f"{num_nodes - 2}] (the honest graph needs 2 nodes), got {s!r}.")
    if not (isinstance(section.sybil_degree, int) and
            1 <= section.sybil_degree <= num_nodes - s):
      raise ValueError(f"adversary.sybil_degree must be an integer in [1, {num_nodes - s}] (the "
                       f"honest nodes), got {section.sybil_degree!r}.")
  if section.placement == "ids":
    if fraction or count is not None:
      raise ValueError(f"adversary.placement='ids' takes its nodes from adversary.ids={ids}; "
                       f"leave adversary.fraction ({section.fraction}) and adversary.count "
                       f"({count}) unset.")
    bad = [i for i in ids if not (isinstance(i, int) and 0 <= i < num_nodes)]
    if bad or len(set(ids)) != len(ids) or len(ids) >= num_nodes:
      raise ValueError(f"adversary.ids={ids} must be distinct node ids in [0, {num_nodes}) "
                       f"leaving at least one honest node.")
  elif ids:
    raise ValueError(f"adversary.ids={ids} is only read with adversary.placement='ids', not "
                     f"{section.placement!r}.")
  if count is not None and fraction:
    raise ValueError(f"adversary.count={count} and adversary.fraction={section.fraction} both "
                     "set; give one of them.")
  if num_byzantine(section, num_nodes) >= num_nodes:
    raise ValueError(f"adversary.fraction={section.fraction} makes all {num_nodes} nodes "
                     "Byzantine; at least one must be honest.")
  if not section.noise_std >= 0:
    raise ValueError(f"adversary.noise_std must be >= 0, got {section.noise_std}.")
