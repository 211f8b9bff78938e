"""data.min_samples: nodes the Dirichlet split leaves short take samples from the largest shards."""
import numpy as np
import pytest

from dfl.data.partition import partition


def greedy_sizes(sizes, m):
  """Shard sizes after the top-up, by hand: each short node in order takes one sample at a time
  from the largest shard (first one on ties)."""
  sizes = list(sizes)
  for node in range(len(sizes)):
    while sizes[node] < m:
      donor = sizes.index(max(sizes))
      sizes[donor] -= 1
      sizes[node] += 1
  return sizes


def split_sizes(labels, n, alpha, seed):
  """The Dirichlet split's shard sizes before any top-up (Hsu et al.: per class, q ~ Dir)."""
  rng = np.random.default_rng(seed)
  sizes = np.zeros(n, int)
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    q = rng.dirichlet(np.full(n, alpha))
    cuts = (np.cumsum(q)[:-1] * len(members)).astype(int)
    sizes += np.diff(np.concatenate([[0], cuts, [len(members)]]))
  return sizes


@pytest.mark.parametrize("m", [1, 3])
def test_short_nodes_are_topped_up_from_the_largest_shards(m):
  labels = np.repeat(np.arange(4), 30)  # 120 samples over 40 nodes: many empty at alpha 0.1
  before = split_sizes(labels, 40, 0.1, seed=5)
  assert (before == 0).sum() > 5
  parts = partition(labels, 40, "dirichlet", alpha=0.1, min_samples=m, seed=5)
  assert [len(p) for p in parts] == greedy_sizes(before, m)
  assert sorted(np.concatenate(parts).tolist()) == list(range(120))  # each sample once


def test_no_short_node_gives_the_same_shards_as_without_top_up():
  labels = np.repeat(np.arange(10), 100)
  plain = partition(labels, 10, "dirichlet", alpha=1.0, seed=3)
  assert min(map(len, plain)) >= 2
  topped = partition(labels, 10, "dirichlet", alpha=1.0, min_samples=2, seed=3)
  assert all(np.array_equal(a, b) for a, b in zip(plain, topped))


def test_min_samples_errors():
  labels = np.repeat(np.arange(2), 3)
  with pytest.raises(ValueError, match="without data"):  # 0: no top-up, as before
    partition(labels, 50, "dirichlet", alpha=0.01, min_samples=0, seed=0)
  with pytest.raises(ValueError, match=r"data.min_samples=1 needs 50 samples for 50 nodes, but "
                                       r"the training set has 6"):
    partition(labels, 50, "dirichlet", alpha=0.01, min_samples=1, seed=0)
  with pytest.raises(ValueError, match=r"data.min_samples must be an integer >= 0, got -1"):
    partition(labels, 2, "dirichlet", alpha=1.0, min_samples=-1, seed=0)


def test_min_samples_through_the_config():
  from dfl.errors import UserError
  from dfl.experiment import build_experiment
  from experiments.configs import default
  c = default.get_config()
  c.num_nodes, c.data.alpha, c.model.name = 300, 0.05, "logreg"  # digits: 1,797 samples
  with pytest.raises(UserError, match="nodes without data"):
    build_experiment(c)
  c.data.min_samples = 2
  assert int(build_experiment(c).data.sizes.min()) == 2
  c.data.min_samples = -1
  with pytest.raises(UserError, match="data.min_samples must be an integer >= 0, got -1"):
    build_experiment(c)
