"""The embedded default dataset: scikit-learn's handwritten digits (UCI optdigits test set).

1,797 real 8x8 grey-level digits ship inside the scikit-learn wheel, so the default run needs no
download. A fixed, stratified 80/20 split gives 1,437 training and 360 test images.
"""
from __future__ import annotations

import numpy as np

TEST_FRACTION = 0.2
_SPLIT_SEED = 0  # the split is part of the dataset's definition, not of the run's seed


def load_digits_dataset():
  """Returns (x_train, y_train, x_test, y_test); images float32 [n, 8, 8, 1] in [0, 1]."""
  try:
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("data.name='digits' needs scikit-learn (pip install scikit-learn).") from e
  digits = load_digits()
  x = (digits.images.astype(np.float32) / 16.0)[..., None]
  y = digits.target.astype(np.int32)
  rng = np.random.default_rng(_SPLIT_SEED)
  test = np.zeros(len(y), bool)
  for c in np.unique(y):  # stratified: every class keeps the same test fraction
    members = rng.permutation(np.flatnonzero(y == c))
    test[members[: int(round(TEST_FRACTION * len(members)))]] = True
  return x[~test], y[~test], x[test], y[test]
