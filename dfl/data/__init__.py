"""Datasets: a registry of loaders returning numpy arrays, plus partitioning over nodes.

`load_dataset(name, data_dir)` is the only entry point the driver uses. Every loader returns
images as float32 `[n, H, W, C]` and labels as int32 `[n]`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

import numpy as np

from dfl.data.cifar import cifar_loader
from dfl.data.digits import load_digits_dataset
from dfl.data.idx import load_idx_dataset

DATA_DIR_ENV = "DFL_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int

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


def load_dataset(name: str, data_dir: Optional[str] = None) -> Dataset:
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset data.name={name!r}; valid: {sorted(DATASETS)}.")
  loader, num_classes = DATASETS[name]
  x_train, y_train, x_test, y_test = loader(data_dir)
  return Dataset(name, x_train, y_train, x_test, y_test, num_classes)
