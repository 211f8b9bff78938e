"""Datasets: a registry of loaders returning numpy arrays, plus partitioning over nodes.

`load_dataset(name, data_dir, kwargs)` is the only entry point the driver uses. Every loader
returns inputs as float32 `[n, ...]` (images `[n, H, W, C]`) and labels as int32 `[n]`.

A user's dataset is named by import path, `data.name="my_pkg.data:load"`: a function called with
`data.kwargs` that returns a `Dataset` or a dict with `x_train`, `y_train`, `x_test`, `y_test`
and optionally `num_classes` (default: the largest label + 1) and `node_ids_train` (the node,
writer or device each training sample belongs to, for `data.partition=natural`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

import numpy as np

from dfl.data.cifar import cifar_loader
from dfl.data.digits import load_digits_dataset
from dfl.data.idx import load_idx_dataset
from dfl.errors import UserError
from dfl.imports import is_import_path, resolve

DATA_DIR_ENV = "DFL_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  # Optional: the natural owner of every training sample (writer, user, device), [n_train].
  node_ids_train: Optional[np.ndarray] = None

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.x_train.shape[1:])


def resolve_data_dir(data_dir: Optional[str]) -> str:
  """config.data.dir if set, else $DFL_DATA_DIR; a clear error when neither is."""
  data_dir = data_dir or os.environ.get(DATA_DIR_ENV, "")
  if not data_dir:
    raise ValueError(
        f"This dataset is read from disk but no data directory was given: set config.data.dir "
        f"(--config.data.dir=/path) or the {DATA_DIR_ENV} environment variable to a folder that "
        "holds one sub-folder per dataset (mnist/, fashion_mnist/, cifar10/, ...).")
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f"Data directory {data_dir!r} does not exist (from config.data.dir "
                            f"or ${DATA_DIR_ENV}).")
  return data_dir


def _folder_loader(folder: str, reader: Callable[[str, str], tuple]) -> Callable[[Optional[str]], tuple]:
  def load(data_dir):
    return reader(os.path.join(resolve_data_dir(data_dir), folder), folder)
  return load


# name -> (loader(data_dir) -> (x_train, y_train, x_test, y_test), num_classes)
DATASETS: dict[str, tuple[Callable[[Optional[str]], tuple], int]] = {
    "digits": (lambda data_dir: load_digits_dataset(), 10),
    "mnist": (_folder_loader("mnist", load_idx_dataset), 10),
    "fashion_mnist": (_folder_loader("fashion_mnist", load_idx_dataset), 10),
    "cifar10": (cifar_loader("cifar10"), 10),
    "cifar100": (cifar_loader("cifar100"), 100),
}


# Datasets whose samples are H x W x C images (data.augment=crop_flip applies to them).
IMAGE_DATASETS = frozenset({"digits", "mnist", "fashion_mnist", "cifar10", "cifar100"})


def load_dataset(name: str, data_dir: Optional[str] = None,
                 kwargs: Optional[dict] = None) -> Dataset:
  """A built-in dataset, or a user's by import path (module docstring)."""
  kwargs = dict(kwargs or {})
  if is_import_path(name):
    return _user_dataset(name, kwargs)
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset data.name={name!r}; valid: {sorted(DATASETS)} or an import "
                     "path 'package.module:function'.")
  if kwargs:
    raise UserError(f"data.kwargs={kwargs} is for datasets named by import path; the built-in "
                    f"data.name={name!r} takes none.")
  loader, num_classes = DATASETS[name]
  x_train, y_train, x_test, y_test = loader(data_dir)
  return Dataset(name, x_train, y_train, x_test, y_test, num_classes)


def dataset_fields(dataset: Dataset) -> dict[str, Any]:
  """A Dataset's fields as a dict, arrays not copied (dataclasses.asdict would copy them)."""
  return {f.name: getattr(dataset, f.name) for f in dataclasses.fields(dataset)}


DATASET_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _user_dataset(path: str, kwargs: dict) -> Dataset:
  load = resolve(path, "data.name")
  if not callable(load):
    raise UserError(f"data.name={path!r} names a {type(load).__name__}, not a function.")
  loaded = load(**kwargs)
  if isinstance(loaded, Dataset):
    return as_dataset(dataset_fields(loaded), path)
  if not isinstance(loaded, dict):
    raise UserError(f"data.name={path!r} returned a {type(loaded).__name__}; return a "
                    f"dfl.data.Dataset or a dict with {list(DATASET_KEYS)}.")
  return as_dataset({"name": path, **loaded}, path)


def as_dataset(arrays: dict[str, Any], source: str) -> Dataset:
  """A checked Dataset from a dict of arrays (what a user's loader or object provides)."""
  missing = [k for k in DATASET_KEYS if k not in arrays]
  if missing:
    raise UserError(f"{source}: the dataset lacks {missing}; it needs {list(DATASET_KEYS)}.")
  x_train, x_test = (np.asarray(arrays[k], np.float32) for k in ("x_train", "x_test"))
  y_train, y_test = (np.asarray(arrays[k]) for k in ("y_train", "y_test"))
  for key, y in (("y_train", y_train), ("y_test", y_test)):
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
      raise UserError(f"{source}: {key} must be a 1-d array of integer class labels >= 0, got "
                      f"shape {y.shape} and dtype {y.dtype}.")
  for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
    if len(x) != len(y) or len(y) == 0:
      raise UserError(f"{source}: x_{split} has {len(x)} samples and y_{split} {len(y)}; they "
                      "must match and be non-empty.")
  if x_train.shape[1:] != x_test.shape[1:]:
    raise UserError(f"{source}: x_train samples have shape {x_train.shape[1:]} but x_test "
                    f"samples {x_test.shape[1:]}.")
  labels_max = int(max(y_train.max(), y_test.max()))
  num_classes = int(arrays.get("num_classes") or labels_max + 1)
  if num_classes <= labels_max:
    raise UserError(f"{source}: num_classes={num_classes} but a label is {labels_max}.")
  node_ids = arrays.get("node_ids_train")
  if node_ids is not None:
    node_ids = np.asarray(node_ids)
    if node_ids.shape != y_train.shape or not np.issubdtype(node_ids.dtype, np.integer):
      raise UserError(f"{source}: node_ids_train must be integers, one per training sample "
                      f"({len(y_train)}), got shape {node_ids.shape} and dtype {node_ids.dtype}.")
  return Dataset(str(arrays.get("name") or source), x_train, y_train.astype(np.int32), x_test,
                 y_test.astype(np.int32), num_classes, node_ids)
