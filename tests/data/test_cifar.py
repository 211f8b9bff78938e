"""The CIFAR pickle reader on tiny files written in the standard python-version format."""
import pickle

import numpy as np
import pytest

from dfl.data import load_dataset
from dfl.data.cifar import PIXEL_STATS, read_cifar_file


def write_batch(path, images_NxHxWxC, labels, label_key):
  """A file laid out as the upstream ones: a protocol-2 pickle of a dict with bytes keys, data
  uint8 [n, 3072] channel-major (R plane, G plane, B plane), labels a list of ints."""
  data = images_NxHxWxC.transpose(0, 3, 1, 2).reshape(len(labels), -1)
  entry = {b"batch_label": b"testing batch 1 of 1", label_key: [int(l) for l in labels],
           b"data": data, b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
  if label_key == b"fine_labels":
    entry[b"coarse_labels"] = [int(l) // 5 for l in labels]
  with open(path, "wb") as f:
    pickle.dump(entry, f, protocol=2)


def images(rng, n):
  return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def test_cifar10_reader_layout_labels_and_standardisation(tmp_path):
  rng = np.random.default_rng(0)
  folder = tmp_path / "cifar-10-batches-py"  # the upstream folder name
  folder.mkdir()
  train = [(images(rng, 3), rng.integers(0, 10, 3)) for _ in range(5)]
  for i, (x, y) in enumerate(train, start=1):
    write_batch(folder / f"data_batch_{i}", x, y, b"labels")
  x_test, y_test = images(rng, 4), rng.integers(0, 10, 4)
  write_batch(folder / "test_batch", x_test, y_test, b"labels")

  raw, labels = read_cifar_file(str(folder / "test_batch"), "labels")
  np.testing.assert_array_equal(raw, x_test)  # channel-major rows back to HWC images
  np.testing.assert_array_equal(labels, y_test)

  ds = load_dataset("cifar10", str(tmp_path))
  assert ds.x_train.shape == (15, 32, 32, 3) and ds.x_train.dtype == np.float32
  assert ds.num_classes == 10 and ds.y_train.dtype == np.int32
  np.testing.assert_array_equal(ds.y_train, np.concatenate([y for _, y in train]))
  mean, std = (np.asarray(s, np.float32) for s in PIXEL_STATS["cifar10"])
  np.testing.assert_allclose(ds.x_test, (x_test / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)


def test_cifar100_reader_uses_fine_labels(tmp_path):
  rng = np.random.default_rng(1)
  folder = tmp_path / "cifar100"  # the dataset-named folder
  folder.mkdir()
  x, y = images(rng, 6), np.array([0, 99, 42, 7, 63, 5])
  write_batch(folder / "train", x, y, b"fine_labels")
  write_batch(folder / "test", x[:2], y[:2], b"fine_labels")
  ds = load_dataset("cifar100", str(tmp_path))
  assert ds.num_classes == 100
  np.testing.assert_array_equal(ds.y_train, y)


def test_missing_file_names_it(tmp_path):
  folder = tmp_path / "cifar10"
  folder.mkdir()
  write_batch(folder / "data_batch_1", images(np.random.default_rng(0), 1), [3], b"labels")
  with pytest.raises(FileNotFoundError, match="data_batch_2"):
    load_dataset("cifar10", str(tmp_path))


def test_missing_folder_names_both_candidates(tmp_path):
  with pytest.raises(FileNotFoundError, match="cifar-100-python"):
    load_dataset("cifar100", str(tmp_path))


def test_foreign_pickle_is_refused(tmp_path):
  folder = tmp_path / "cifar10"
  folder.mkdir()
  with open(folder / "test_batch", "wb") as f:
    pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0],
                 b"extra": pytest.raises}, f)  # references a global outside numpy
  with pytest.raises(ValueError, match="Malformed CIFAR file"):
    read_cifar_file(str(folder / "test_batch"), "labels")
