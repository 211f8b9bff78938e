"""Readers for the IDX files of MNIST and Fashion-MNIST (LeCun et al.'s original format).

The files are read from a local folder only; nothing is ever downloaded, so a missing file is a
clear error naming the file and where it was expected.
"""
from __future__ import annotations

import gzip
import os

import numpy as np

_IMAGE_MAGIC = 2051
_LABEL_MAGIC = 2049

# Pixel statistics of each training set, used to standardise inputs.
PIXEL_STATS = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}


def _read(path: str) -> bytes:
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"Dataset file not found: {path}. Put the original IDX .gz files in that folder "
        "(set config.data.dir or the DFL_DATA_DIR environment variable to the folder that holds "
        "one sub-folder per dataset, e.g. mnist/ and fashion_mnist/). Nothing is downloaded.")
  with open(path, "rb") as f:
    raw = f.read()
  if raw[:2] == b"\x1f\x8b":
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
      raise ValueError(f"Malformed dataset file {path}: not a valid gzip stream ({e}).") from e
  return raw


def read_idx_images(path: str) -> np.ndarray:
  """Returns uint8 images [n, rows, cols] from an IDX3 file (gzipped or not)."""
  raw = _read(path)
  if len(raw) < 16:
    raise ValueError(f"Malformed IDX image file {path}: only {len(raw)} bytes, header needs 16.")
  magic, n, rows, cols = np.frombuffer(raw, ">i4", count=4)
  if magic != _IMAGE_MAGIC:
    raise ValueError(f"Malformed IDX image file {path}: magic {magic}, expected {_IMAGE_MAGIC}.")
  expected = 16 + int(n) * int(rows) * int(cols)
  if len(raw) != expected:
    raise ValueError(f"Malformed IDX image file {path}: {len(raw)} bytes, header promises "
                     f"{expected} ({n} images of {rows}x{cols}); the file may be truncated.")
  return np.frombuffer(raw, np.uint8, offset=16).reshape(int(n), int(rows), int(cols))


def read_idx_labels(path: str) -> np.ndarray:
  """Returns uint8 labels [n] from an IDX1 file (gzipped or not)."""
  raw = _read(path)
  if len(raw) < 8:
    raise ValueError(f"Malformed IDX label file {path}: only {len(raw)} bytes, header needs 8.")
  magic, n = np.frombuffer(raw, ">i4", count=2)
  if magic != _LABEL_MAGIC:
    raise ValueError(f"Malformed IDX label file {path}: magic {magic}, expected {_LABEL_MAGIC}.")
  if len(raw) != 8 + int(n):
    raise ValueError(f"Malformed IDX label file {path}: {len(raw)} bytes, header promises "
                     f"{8 + int(n)}; the file may be truncated.")
  return np.frombuffer(raw, np.uint8, offset=8)


def load_idx_dataset(folder: str, name: str):
  """Loads train and test splits of MNIST-format data from `folder`.

  Returns (x_train, y_train, x_test, y_test): images float32 [n, 28, 28, 1] standardised with
  the training set's pixel statistics, labels int32.
  """
  mean, std = PIXEL_STATS[name]
  out = []
  for split in ("train", "t10k"):
    images = read_idx_images(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx_labels(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"))
    if len(images) != len(labels):
      raise ValueError(f"{folder}: {split} has {len(images)} images but {len(labels)} labels.")
    x = ((images.astype(np.float32) / 255.0 - mean) / std)[..., None]
    out += [x, labels.astype(np.int32)]
  return tuple(out)
