"""Reader for CIFAR-10 and CIFAR-100 (Krizhevsky, "Learning Multiple Layers of Features from Tiny
Images", 2009) in their standard "python version" pickle distribution.

Expected layout under the data directory (config.data.dir or $DFL_DATA_DIR); either the folder
named after the dataset or the folder the upstream tarball extracts to is accepted, first found
wins:

    cifar10/  or  cifar-10-batches-py/   data_batch_1 .. data_batch_5, test_batch
    cifar100/ or  cifar-100-python/      train, test   (fine labels: 100 classes)

Each file is a pickled dict with b"data" (uint8 [n, 3072], rows are 1024 red, 1024 green, 1024
blue values of a 32x32 image in row-major order) and b"labels" (CIFAR-10) or b"fine_labels"
(CIFAR-100). Unpickling is restricted to the numpy array types these files contain, so a foreign
pickle cannot run code. Nothing is ever downloaded: a missing file is a clear error.
"""
from __future__ import annotations

import os
import pickle
from typing import Optional

import numpy as np

# Per-channel pixel mean and std of each training set (in [0, 1] units), for standardisation.
PIXEL_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
FOLDERS = {"cifar10": ("cifar10", "cifar-10-batches-py"),
           "cifar100": ("cifar100", "cifar-100-python")}
FILES = {"cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
         "cifar100": (["train"], ["test"])}
LABEL_KEY = {"cifar10": "labels", "cifar100": "fine_labels"}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
_IMAGE_SIZE = 32 * 32 * 3

# What a CIFAR pickle may reference: numpy's array reconstruction, and _codecs.encode, which
# protocol-2 pickles written by Python 3 use for bytes; nothing that can run arbitrary code.
_ALLOWED_GLOBALS = {("numpy.core.multiarray", "_reconstruct"),
                    ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
                    ("numpy", "dtype"), ("_codecs", "encode")}


class _ArrayUnpickler(pickle.Unpickler):
  def find_class(self, module, name):
    if (module, name) not in _ALLOWED_GLOBALS:
      raise pickle.UnpicklingError(f"CIFAR file references {module}.{name}, which a CIFAR pickle "
                                   "never does; refusing to load it.")
    return super().find_class(module, name)


def find_folder(data_dir: str, name: str) -> str:
  """The first existing candidate folder of dataset `name` under data_dir, with a clear error."""
  candidates = [os.path.join(data_dir, f) for f in FOLDERS[name]]
  for folder in candidates:
    if os.path.isdir(folder):
      return folder
  raise FileNotFoundError(
      f"{name}: no folder {' or '.join(candidates)}. Extract the python version of the dataset "
      f"({FOLDERS[name][1]}/ from the upstream tarball) there, or rename it to "
      f"{FOLDERS[name][0]}/. Nothing is downloaded.")


def read_cifar_file(path: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns (uint8 images [n, 32, 32, 3], int32 labels [n]) from one CIFAR pickle file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"CIFAR file not found: {path} (expected the standard python-version "
                            "distribution; nothing is downloaded).")
  try:
    with open(path, "rb") as f:
      raw = _ArrayUnpickler(f, encoding="bytes").load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
    raise ValueError(f"Malformed CIFAR file {path}: not a readable pickle ({e}).") from e
  if not isinstance(raw, dict):
    raise ValueError(f"Malformed CIFAR file {path}: expected a pickled dict, got {type(raw)}.")
  entry = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
  for key in ("data", label_key):
    if key not in entry:
      raise ValueError(f"Malformed CIFAR file {path}: no {key!r} entry (has {sorted(entry)}).")
  data = np.asarray(entry["data"], np.uint8)
  labels = np.asarray(entry[label_key], np.int32)
  if data.ndim != 2 or data.shape[1] != _IMAGE_SIZE or len(data) != len(labels):
    raise ValueError(f"Malformed CIFAR file {path}: data {data.shape}, {len(labels)} labels; "
                     f"expected [n, {_IMAGE_SIZE}] and n labels.")
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar(name: str, data_dir: str):
  """Loads CIFAR-10 (`name='cifar10'`) or CIFAR-100 (`'cifar100'`, fine labels).

  Returns (x_train, y_train, x_test, y_test): images float32 [n, 32, 32, 3] standardised per
  channel with the training set's statistics, labels int32.
  """
  folder = find_folder(data_dir, name)
  mean, std = (np.asarray(s, np.float32) for s in PIXEL_STATS[name])
  out = []
  for files in FILES[name]:
    images, labels = zip(*(read_cifar_file(os.path.join(folder, f), LABEL_KEY[name]) for f in files))
    labels = np.concatenate(labels)
    if labels.min() < 0 or labels.max() >= NUM_CLASSES[name]:
      raise ValueError(f"{folder}: labels outside [0, {NUM_CLASSES[name]}) for {name}.")
    x = np.concatenate(images).astype(np.float32)
    x /= 255.0  # in place: CIFAR's float32 training set alone is 614 MB
    x -= mean
    x /= std
    out += [x, labels]
  return tuple(out)


def cifar_loader(name: str):
  """loader(data_dir) for the DATASETS registry."""
  def load(data_dir: Optional[str]):
    from dfl.data import resolve_data_dir  # pylint: disable=import-outside-toplevel
    return load_cifar(name, resolve_data_dir(data_dir))
  return load
