"""Training-time data augmentation on device, inside jit: `data.augment = none | crop_flip`.

`crop_flip` is the standard CIFAR augmentation (He et al., "Deep Residual Learning for Image
Recognition", 2016, Sec. 4.2) as the DisPFL / DA-DPFL CIFAR loaders apply it to every training
sample: `transforms.RandomCrop(32, padding=4)` then `transforms.RandomHorizontalFlip()` in
`_data_transforms_cifar10` of fedml_api/data_preprocessing/cifar10/data_loader.py
(github.com/rong-dai/DisPFL; the same in github.com/EricLoong/da-dpfl and the cifar100 loaders).
Each image of a minibatch gets its own crop offsets (dy, dx), uniform in {0, ..., 2·padding},
into the image padded by `padding` pixels on every side, and its own flip of the width axis
with probability 1/2. RandomCrop's default padding is constant 0 on the uint8 image, before
`Normalize`; since dfl's loaders store standardised pixels, the padding value here is that
black pixel in stored units (`black_pixel`: -mean/std per channel for CIFAR and MNIST-format
data, 0 for the [0, 1] digits), not 0.

`augment(key, x_BxHxWxC)` returns a batch of the same shape and dtype; the randomness comes only
from `key` (one per node and local step in dfl/local.py), so it is reproducible and vmaps over
nodes. Test images are never augmented (the reference's valid_transform has no crop or flip).
Deviation: torchvision draws the crop offsets and the flip with torch's global generator per
sample in the loader's worker; here they are drawn from the JAX key, so the distribution is the
same but not the draws.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dfl.data import cifar, idx

AUGMENTATIONS = ("none", "crop_flip")
PADDING = 4  # RandomCrop(32, padding=4)


def black_pixel(dataset_name: str, channels: int) -> np.ndarray:
  """[C] the value a raw pixel of 0 has after the dataset's loader standardised it."""
  stats = {**cifar.PIXEL_STATS, **idx.PIXEL_STATS}
  if dataset_name not in stats:  # digits and other loaders that keep pixels in [0, 1]
    return np.zeros(channels, np.float32)
  mean, std = (np.broadcast_to(np.asarray(s, np.float32), (channels,)) for s in stats[dataset_name])
  return (-mean / std).astype(np.float32)


def draw_crop_flip(key: jax.Array, batch: int, padding: int = PADDING) -> tuple[jax.Array, jax.Array]:
  """(offsets [B, 2] int32 in [0, 2·padding], flip [B] bool with P = 1/2) for one minibatch."""
  key_offsets, key_flip = jax.random.split(key)
  offsets_Bx2 = jax.random.randint(key_offsets, (batch, 2), 0, 2 * padding + 1, jnp.int32)
  flip_B = jax.random.bernoulli(key_flip, 0.5, (batch,))
  return offsets_Bx2, flip_B


def apply_crop_flip(x_BxHxWxC: jax.Array, offsets_Bx2: jax.Array, flip_B: jax.Array, *,
                    pad_value_C: jax.Array | float = 0.0, padding: int = PADDING) -> jax.Array:
  """Crops image b at offsets_Bx2[b] out of its padded copy, then flips it if flip_B[b]."""
  b, h, w, c = x_BxHxWxC.shape
  fill = jnp.broadcast_to(jnp.asarray(pad_value_C, x_BxHxWxC.dtype), (c,))
  padded = jnp.broadcast_to(fill, (b, h + 2 * padding, w + 2 * padding, c))
  padded = padded.at[:, padding:padding + h, padding:padding + w, :].set(x_BxHxWxC)
  crop = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, c))
  window = jax.vmap(crop)(padded, offsets_Bx2)
  return jnp.where(flip_B[:, None, None, None], window[:, :, ::-1, :], window)


def crop_flip(key: jax.Array, x_BxHxWxC: jax.Array, *, pad_value_C: jax.Array | float = 0.0,
              padding: int = PADDING) -> jax.Array:
  """Random crop with `padding`-pixel constant padding and a random horizontal flip, per image."""
  offsets_Bx2, flip_B = draw_crop_flip(key, x_BxHxWxC.shape[0], padding)
  return apply_crop_flip(x_BxHxWxC, offsets_Bx2, flip_B, pad_value_C=pad_value_C, padding=padding)


def make_augment(name: str, input_shape: Sequence[int], *,
                 pad_value_C: Optional[np.ndarray] = None) -> Optional[Callable]:
  """augment(key, x_BxHxWxC) -> same shape for `data.augment=name`, or None for 'none'."""
  if name not in AUGMENTATIONS:
    raise ValueError(f"Unknown data.augment={name!r}; valid: {list(AUGMENTATIONS)}.")
  if name == "none":
    return None
  if len(input_shape) != 3:
    raise ValueError(f"data.augment={name!r} needs images of shape H x W x C, but the dataset's "
                     f"samples have shape {tuple(input_shape)}; use data.augment='none'.")
  fill = np.zeros(input_shape[-1], np.float32) if pad_value_C is None else pad_value_C
  return functools.partial(crop_flip, pad_value_C=jnp.asarray(fill, jnp.float32))
