"""data.augment=crop_flip: every output is a window of the padded image, possibly flipped, found
by a plain numpy search; offsets and flips have the right distribution; jit and vmap."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl.config_checks import validate_config
from dfl.data.augment import (apply_crop_flip, black_pixel, crop_flip, draw_crop_flip,
                              make_augment)
from tests.conftest import tiny_config

H, W, C = 6, 5, 2
PAD = np.array([-1.5, 2.0], np.float32)


def _images(n, seed=0):
  return np.random.default_rng(seed).normal(size=(n, H, W, C)).astype(np.float32)


def _candidates(image):
  """All 9 x 9 x 2 (dy, dx, flip) outputs by numpy: windows of the padded image."""
  padded = np.empty((H + 8, W + 8, C), np.float32)
  padded[...] = PAD
  padded[4:4 + H, 4:4 + W] = image
  out = {}
  for dy in range(9):
    for dx in range(9):
      window = padded[dy:dy + H, dx:dx + W]
      out[(dy, dx, False)] = window
      out[(dy, dx, True)] = window[:, ::-1]
  return out


def _key_drawing(want_offsets, want_flip=None):
  """The first key fold_in(key(0), i) whose draw for a batch of one has these offsets (and flip)."""
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(5000))
  offsets, flips = jax.vmap(lambda k: draw_crop_flip(k, 1))(keys)
  ok = np.all(np.asarray(offsets[:, 0]) == want_offsets, axis=1)
  if want_flip is not None:
    ok &= np.asarray(flips[:, 0]) == want_flip
  return keys[int(np.flatnonzero(ok)[0])]


def _which(image, result):
  matches = [k for k, v in _candidates(image).items() if np.array_equal(v, result)]
  assert len(matches) == 1, matches
  return matches[0]


def test_offset_4_without_flip_is_the_identity():
  x = _images(3)
  np.testing.assert_array_equal(
      apply_crop_flip(x, jnp.full((3, 2), 4), jnp.zeros(3, bool), pad_value_C=PAD), x)
  # A key whose draw for a batch of one is (4, 4) and no flip leaves the image unchanged.
  key = _key_drawing([4, 4], False)
  np.testing.assert_array_equal(crop_flip(key, x[:1], pad_value_C=PAD), x[:1])


def test_every_output_is_a_window_and_the_draws_are_uniform():
  n = 1500
  x = _images(n)
  out = np.asarray(jax.jit(lambda k, x: crop_flip(k, x, pad_value_C=PAD))(jax.random.key(1), x))
  found = np.array([_which(x[b], out[b]) for b in range(n)])
  dy, dx, flip = found[:, 0], found[:, 1], found[:, 2].astype(bool)
  assert set(dy) == set(dx) == set(range(9))  # offsets 0..8, padding 4 on each side
  for offsets in (dy, dx):
    assert np.all(np.abs(np.bincount(offsets, minlength=9) / n - 1 / 9) < 0.035)
  assert abs(flip.mean() - 0.5) < 0.05  # ~ 4.5 standard deviations at n = 1500
  assert abs(np.corrcoef(dy, dx)[0, 1]) < 0.1  # drawn independently per axis


def test_jit_vmap_over_nodes_uses_each_nodes_key():
  x_NxB = _images(4 * 8).reshape(4, 8, H, W, C)
  keys = jax.random.split(jax.random.key(2), 4)
  fn = jax.jit(lambda k, x: crop_flip(k, x, pad_value_C=PAD))
  batched = np.asarray(jax.jit(jax.vmap(fn))(keys, x_NxB))
  for i in range(4):
    np.testing.assert_array_equal(batched[i], np.asarray(fn(keys[i], x_NxB[i])))
  same = np.stack([np.asarray(fn(keys[0], x_NxB[i])) for i in range(4)])
  assert not np.array_equal(batched, same)  # different keys, different crops


def test_padding_is_the_datasets_black_pixel():
  np.testing.assert_allclose(black_pixel("cifar10", 3),
                             -np.array([0.4914, 0.4822, 0.4465]) / [0.2470, 0.2435, 0.2616],
                             rtol=1e-6)
  np.testing.assert_allclose(black_pixel("mnist", 1), [-0.1307 / 0.3081], rtol=1e-6)
  np.testing.assert_array_equal(black_pixel("digits", 1), [0.0])
  augment = make_augment("crop_flip", (32, 32, 3), pad_value_C=black_pixel("cifar10", 3))
  x = np.ones((1, 32, 32, 3), np.float32)
  key = _key_drawing([0, 0])
  out = np.asarray(augment(key, x))
  np.testing.assert_allclose(out[0, :4, :], np.broadcast_to(black_pixel("cifar10", 3), (4, 32, 3)))


def test_make_augment_and_config_errors():
  assert make_augment("none", (8, 8, 1)) is None
  with pytest.raises(ValueError, match="data.augment='rotate'"):
    make_augment("rotate", (8, 8, 1))
  with pytest.raises(ValueError, match="H x W x C"):
    make_augment("crop_flip", (64,))
  with pytest.raises(ValueError, match="data.augment='rotate'"):
    validate_config(tiny_config(data__augment="rotate"))
  validate_config(tiny_config(data__augment="crop_flip"))
