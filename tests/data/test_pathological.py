"""Path(k): every node holds exactly k distinct classes; shards are disjoint and cover the data."""
import numpy as np
import pytest

from dfl.data.partition import pack_shards, partition


@pytest.mark.parametrize("num_nodes,k,num_classes", [(8, 2, 10), (10, 3, 10), (7, 1, 5),
                                                     (4, 10, 10), (6, 4, 100)])
def test_each_node_holds_exactly_k_classes(num_nodes, k, num_classes):
  labels = np.random.default_rng(0).integers(0, num_classes, size=3000)
  parts = partition(labels, num_nodes, "pathological", classes_per_node=k, seed=1)
  assert len(parts) == num_nodes
  for p in parts:
    assert len(np.unique(labels[p])) == k
  everything = np.concatenate(parts)
  assert len(everything) == len(np.unique(everything))  # disjoint
  if num_nodes * k >= num_classes:
    assert len(everything) == len(labels)  # every class is used, every sample placed
  # Classes are spread evenly: each used class is held by floor or ceil(N k / C) nodes.
  holders = np.bincount(np.concatenate([np.unique(labels[p]) for p in parts]),
                        minlength=num_classes)
  used = holders[holders > 0]
  assert used.max() - used.min() <= 1
  indices, sizes = pack_shards(parts)
  assert indices.shape == (num_nodes, sizes.max())


def test_seeded_and_not_aligned_with_node_order():
  labels = np.repeat(np.arange(10), 100)
  a = partition(labels, 10, "pathological", classes_per_node=2, seed=3)
  b = partition(labels, 10, "pathological", classes_per_node=2, seed=3)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  first_classes = [int(labels[p].min()) for p in a]
  assert first_classes != sorted(first_classes)  # node order is shuffled


@pytest.mark.parametrize("k", [0, 11, 2.5])
def test_bad_k_is_a_clear_error(k):
  labels = np.repeat(np.arange(10), 10)
  with pytest.raises(ValueError, match="classes_per_node"):
    partition(labels, 4, "pathological", classes_per_node=k, seed=0)


def test_too_few_samples_for_the_holders_is_a_clear_error():
  labels = np.array([0, 0, 1, 1])
  with pytest.raises(ValueError, match="class"):
    partition(labels, 6, "pathological", classes_per_node=2, seed=0)
