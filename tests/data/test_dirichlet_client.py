"""data.partition=dirichlet_client (DisPFL's partition_data 'dir') and the per-node test splits,
each against a plain re-implementation of the reference's loop written from its source."""
import math

import numpy as np
import pytest

from dfl.data import partition as partition_module
from dfl.data.partition import (class_counts, draw_class, equal_client_size, partition,
                                personal_test_split)


def reference_dir_partition(labels, n_client, alpha, rng):
  """DisPFL fedml_api/data_preprocessing/cifar10/data_loader.py, partition_data, 'dir' branch,
  transcribed with a Generator in place of numpy's global state."""
  n_cls = len(np.unique(labels))
  n_data_per_clnt = len(labels) / n_client
  clnt_data_list = np.full(n_client, np.exp(np.log(n_data_per_clnt)))  # lognormal, sigma=0
  clnt_data_list = (clnt_data_list / np.sum(clnt_data_list) * len(labels)).astype(int)
  cls_priors = rng.dirichlet(alpha=[alpha] * n_cls, size=n_client)
  prior_cumsum = np.cumsum(cls_priors, axis=1)
  idx_list = [np.where(labels == i)[0] for i in range(n_cls)]
  cls_amount = [len(idx_list[i]) for i in range(n_cls)]
  net_dataidx_map = {j: [] for j in range(n_client)}
  while np.sum(clnt_data_list) != 0:
    curr_clnt = rng.integers(n_client)
    if clnt_data_list[curr_clnt] <= 0:
      continue
    clnt_data_list[curr_clnt] -= 1
    curr_prior = prior_cumsum[curr_clnt]
    while True:
      cls_label = np.argmax(rng.random() <= curr_prior)
      if cls_amount[cls_label] <= 0:
        continue
      cls_amount[cls_label] -= 1
      net_dataidx_map[curr_clnt].append(idx_list[cls_label][cls_amount[cls_label]])
      break
  return [np.sort(np.asarray(net_dataidx_map[j], np.int64)) for j in range(n_client)]


def _skewed_labels():
  # Unequal classes (the small ones run out, so the redraw path is taken), shuffled order.
  sizes = [5, 12, 30, 40, 60, 80]
  return np.random.default_rng(7).permutation(np.repeat(np.arange(len(sizes)), sizes))


@pytest.mark.parametrize("num_nodes, alpha, seed", [(4, 0.5, 0), (8, 1.0, 1), (5, 5.0, 2)])
def test_matches_the_reference_loop_draw_for_draw(num_nodes, alpha, seed, monkeypatch):
  # Redraw without limit, as the reference does (the shortcut is checked below).
  monkeypatch.setattr(partition_module, "MAX_CLASS_REDRAWS", 10 ** 9)
  labels = _skewed_labels()
  ours = partition(labels, num_nodes, "dirichlet_client", alpha=alpha, seed=seed)
  ref = reference_dir_partition(labels, num_nodes, alpha, np.random.default_rng(seed))
  assert len(ours) == len(ref) == num_nodes
  for a, b in zip(ours, ref):
    np.testing.assert_array_equal(a, b)
  # The small classes ran out: some node asked for more of them than there were.
  counts = class_counts(labels, ours, 6)
  assert counts[:, 0].sum() == 5 or counts[:, 1].sum() == 12


@pytest.mark.parametrize("max_redraws", [0, 100])
def test_class_draw_is_the_prior_over_the_classes_left(max_redraws, monkeypatch):
  # Hand-computed: classes 0 and 2 used up, so P(1) = 0.3 / 0.32, P(3) = 0.02 / 0.32, whether
  # drawn by redraws (the reference) or directly (max_redraws = 0, the shortcut).
  monkeypatch.setattr(partition_module, "MAX_CLASS_REDRAWS", max_redraws)
  prior = np.array([0.6, 0.3, 0.08, 0.02])
  rng, left, n = np.random.default_rng(0), [0, 5, 0, 5], 20000
  draws = [draw_class(rng, prior, list(np.cumsum(prior)), left) for _ in range(n)]
  freq = np.bincount(draws, minlength=4) / n
  want = np.array([0, 0.3 / 0.32, 0, 0.02 / 0.32])
  assert np.all(np.abs(freq - want) <= 4 * np.sqrt(want * (1 - want) / n)), freq
  assert draw_class(rng, prior, list(np.cumsum(prior)), [0, 0, 0, 0]) is None  # nothing left


def test_equal_sizes_disjoint_and_valid():
  labels = _skewed_labels()
  parts = partition(labels, 7, "dirichlet_client", alpha=0.5, seed=3)
  size = len(labels) // 7  # 227 // 7 = 32 (the float normalisation does not round down here)
  assert [len(p) for p in parts] == [size] * 7
  joined = np.concatenate(parts)
  assert len(np.unique(joined)) == len(joined) == 7 * size  # no sample in two nodes
  assert joined.min() >= 0 and joined.max() < len(labels)


def test_client_size_is_the_references_float_normalisation():
  # int(s / sum(s) * n), s = N copies of exp(log(n / N)); computed by hand in float64:
  # 50,000 / 100 rounds down to 499.999... -> 499 (DisPFL's CIFAR-10 with 100 clients).
  assert equal_client_size(50000, 100) == 499
  assert equal_client_size(60000, 20) == 2999
  assert equal_client_size(1437, 4) == 359 and equal_client_size(1437, 16) == 89


def test_skew_grows_as_alpha_shrinks():
  labels = np.repeat(np.arange(10), 200)

  def top_class_share(alpha):
    counts = class_counts(labels, partition(labels, 10, "dirichlet_client", alpha=alpha,
                                            seed=0), 10)
    return float(np.mean(counts.max(1) / counts.sum(1)))
  assert top_class_share(0.05) > 0.45 > 0.2 > top_class_share(100.0)


def test_long_redraws_end_in_the_same_invariants():
  # alpha = 0.02: priors ~one-hot, so the last samples need far more than MAX_CLASS_REDRAWS
  # redraws (the reference would take ~1/mass of them).
  labels = np.repeat(np.arange(10), 100)
  parts = partition(labels, 10, "dirichlet_client", alpha=0.02, seed=0)
  again = partition(labels, 10, "dirichlet_client", alpha=0.02, seed=0)
  assert all(np.array_equal(a, b) for a, b in zip(parts, again))
  joined = np.concatenate(parts)
  assert [len(p) for p in parts] == [100] * 10 and len(np.unique(joined)) == 1000


def test_a_client_that_cannot_be_filled_is_a_clear_error():
  # Two classes of 10, two clients of 10, priors exactly one-hot: where both pick the same class
  # the reference loops forever.
  labels = np.repeat([0, 1], 10)
  outcomes = []
  for seed in range(20):
    try:
      partition(labels, 2, "dirichlet_client", alpha=1e-4, seed=seed)
      outcomes.append("ok")
    except ValueError as e:
      assert "data.alpha" in str(e)
      outcomes.append("error")
  assert {"ok", "error"} == set(outcomes)


def test_bad_alpha_is_a_clear_error():
  with pytest.raises(ValueError, match="data.alpha must be > 0"):
    partition(np.zeros(10, int), 2, "dirichlet_client", alpha=0.0, seed=0)


def reference_test_split(traindata_cls_counts, y_test, client_number, rng):
  """DisPFL load_partition_data_cifar10's per-client test indices, transcribed."""
  n_cls = len(traindata_cls_counts[0])
  idx_test = [np.where(y_test == label)[0] for label in range(n_cls)]
  test_dataidxs = [[] for _ in range(client_number)]
  tmp_tst_num = math.ceil(len(y_test) / client_number)
  for client_idx in range(client_number):
    for label in range(n_cls):
      label_num = math.ceil(traindata_cls_counts[client_idx][label] /
                            sum(traindata_cls_counts[client_idx]) * tmp_tst_num)
      rand_perm = rng.permutation(len(idx_test[label]))
      if len(test_dataidxs[client_idx]) == 0:
        test_dataidxs[client_idx] = idx_test[label][rand_perm[:label_num]]
      else:
        test_dataidxs[client_idx] = np.concatenate(
            (test_dataidxs[client_idx], idx_test[label][rand_perm[:label_num]]))
  return test_dataidxs


def test_personal_test_split_matches_the_reference_and_the_train_mix():
  labels = _skewed_labels()
  y_test = np.random.default_rng(3).permutation(np.repeat(np.arange(6), [3, 8, 10, 10, 12, 20]))
  parts = partition(labels, 5, "dirichlet_client", alpha=0.3, seed=0)
  counts = class_counts(labels, parts, 6)
  ours = personal_test_split(counts, y_test, np.random.default_rng(11))
  ref = reference_test_split(counts.tolist(), y_test, 5, np.random.default_rng(11))
  per_node = math.ceil(len(y_test) / 5)  # 63 / 5 -> 13
  for i, (a, b) in enumerate(zip(ours, ref)):
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) == len(a) >= per_node  # no repeats within a node
    got = np.bincount(y_test[a], minlength=6)
    want = [min(math.ceil(counts[i, c] / counts[i].sum() * per_node), int((y_test == c).sum()))
            for c in range(6)]
    np.testing.assert_array_equal(got, want)
    assert np.all(got[counts[i] == 0] == 0)  # a class the node never trains on is not tested
