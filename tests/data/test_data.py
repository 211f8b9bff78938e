"""Dataset readers and partitions."""
import gzip

import numpy as np
import pytest

from dfl.data import load_dataset
from dfl.data.idx import read_idx_images, read_idx_labels
from dfl.data.partition import pack_shards, partition


def test_digits_embedded_split():
  ds = load_dataset("digits")
  assert ds.x_train.shape[1:] == (8, 8, 1) and len(ds.x_train) + len(ds.x_test) == 1797
  assert set(np.unique(ds.y_test)) == set(range(10))
  assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_mnist_reader_on_real_files(shared_data_dir):
  ds = load_dataset("mnist", str(shared_data_dir))
  assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
  assert ds.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # from the data README
  assert np.bincount(ds.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
  fm = load_dataset("fashion_mnist", str(shared_data_dir))
  assert fm.y_test[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]


def test_missing_file_names_file_and_location(tmp_path):
  (tmp_path / "mnist").mkdir()
  with pytest.raises(FileNotFoundError, match=r"mnist/train-images-idx3-ubyte\.gz"):
    load_dataset("mnist", str(tmp_path))


def _write_gz(path, raw):
  with gzip.open(path, "wb") as f:
    f.write(raw)


def test_malformed_files_are_clear_errors(tmp_path):
  header = np.array([2051, 3, 2, 2], ">i4").tobytes()
  _write_gz(tmp_path / "truncated.gz", header + bytes(5))
  with pytest.raises(ValueError, match="truncated"):
    read_idx_images(str(tmp_path / "truncated.gz"))
  _write_gz(tmp_path / "magic.gz", np.array([1234, 1], ">i4").tobytes() + bytes(1))
  with pytest.raises(ValueError, match="magic 1234, expected 2049"):
    read_idx_labels(str(tmp_path / "magic.gz"))
  (tmp_path / "broken.gz").write_bytes(b"\x1f\x8b" + b"garbage")
  with pytest.raises(ValueError, match="not a valid gzip"):
    read_idx_labels(str(tmp_path / "broken.gz"))
  ok = np.array([2051, 2, 2, 2], ">i4").tobytes() + bytes(range(8))
  _write_gz(tmp_path / "ok.gz", ok)
  assert read_idx_images(str(tmp_path / "ok.gz")).shape == (2, 2, 2)


def test_iid_partition_covers_data_once():
  labels = np.arange(103) % 10
  parts = partition(labels, 8, "iid", seed=0)
  allidx = np.concatenate(parts)
  assert sorted(allidx.tolist()) == list(range(103))
  assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_dirichlet_partition_is_seeded_skewed_and_complete():
  labels = np.repeat(np.arange(10), 100)
  a = partition(labels, 10, "dirichlet", alpha=0.1, seed=3)
  b = partition(labels, 10, "dirichlet", alpha=0.1, seed=3)
  assert all((x == y).all() for x, y in zip(a, b))
  assert sorted(np.concatenate(a).tolist()) == list(range(1000))
  classes_per_node = [len(np.unique(labels[p])) for p in a]
  assert np.mean(classes_per_node) < 7  # strong skew at alpha=0.1
  iid_like = partition(labels, 10, "dirichlet", alpha=1000.0, seed=3)
  assert min(len(np.unique(labels[p])) for p in iid_like) == 10


def test_dirichlet_partition_errors():
  labels = np.repeat(np.arange(2), 3)
  with pytest.raises(ValueError, match="without data"):
    partition(labels, 50, "dirichlet", alpha=0.01, seed=0)
  with pytest.raises(ValueError, match="alpha must be > 0"):
    partition(labels, 2, "dirichlet", alpha=-1.0, seed=0)
  with pytest.raises(ValueError, match="Unknown data.partition='shards'"):
    partition(labels, 2, "shards", seed=0)


def test_pack_shards_pads_with_own_indices():
  indices, sizes = pack_shards([np.array([4, 5, 6]), np.array([9])])
  assert sizes.tolist() == [3, 1]
  assert indices.tolist() == [[4, 5, 6], [9, 9, 9]]
