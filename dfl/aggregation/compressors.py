"""Compression operators Q for compressed gossip (CHOCO-SGD), and the bytes each message carries.

Koloskova, Stich, Jaggi, "Decentralized Stochastic Optimization and Gossip Algorithms with
Compressed Communication", ICML 2019, Section 3 (examples of compression operators); reference
code github.com/epfml/ChocoSGD, dl_code/pcode/utils/sparsification.py (`get_top_k`,
`get_random_k`, `get_qsgd`) and dl_code/pcode/optim/parallel_choco.py (scaled sign, and what
each message sends). As there, every operator acts on one node's model leaf by leaf (one
parameter tensor at a time), never on the flattened model.

For one leaf x with d entries (b = bytes of its dtype, 4 for float32):

| name | Q(x) | bytes of the message |
|---|---|---|
| `identity` | x | d b |
| `top_k` | the k entries of largest |x_j|, zeros elsewhere | k (b + 4) (values, int32 indices) |
| `random_k` | k entries drawn uniformly without replacement (not rescaled) | k (b + 4) |
| `qsgd` | sign(x) ‖x‖₂ ξ / (s τ), ξ_j = floor(s|x_j|/‖x‖₂) or +1 w.p. the remainder | b + ceil(d (1 + ceil(log2(s + 1))) / 8) |
| `sign` | (‖x‖₁ / d) sign(x) | b + ceil(d / 8) |

k = max(1, floor(ratio d)) with ratio = `compression_ratio`, the fraction of entries kept.
QSGD (Alistarh et al., NeurIPS 2017) with s levels is rescaled by τ = 1 + min(d / s², √d / s),
the CHOCO paper's qsgd_s (a contraction with δ = 1/τ; the reference's `is_biased=True`); its
message is the norm plus, per entry, one sign bit and the level ξ_j in [0, s]. The scaled sign
(Karimireddy et al., "Error Feedback Fixes SignSGD", ICML 2019) sends the L1 norm and one bit
per entry; an entry equal to 0 is sent as +.

Deviations from the reference: its `compress_ratio` is the fraction DROPPED (k = max(1,
int(d (1 - ratio)))), here the fraction kept; it counts QSGD's message as `quantize_level` bits
per entry and no norm, and the sign message padded to 32-bit words, where the table above counts
what a bit-packed message carries; QSGD's s is given directly (the reference's s = 2^bits - 1).
Random draws come from jax keys, not numpy's global state.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = object
COMPRESSORS = ("identity", "top_k", "random_k", "qsgd", "sign")
INDEX_BYTES = 4  # int32 indices of the sparse compressors


class Compressor(NamedTuple):
  """compress(key, x) -> Q(x) for one leaf of one node (any shape, same shape out);
  message_bytes(shape, dtype) -> bytes sent for Q(x) of such a leaf."""
  name: str
  compress: Callable[[jax.Array, jax.Array], jax.Array]
  message_bytes: Callable[[tuple, np.dtype], int]


def kept_entries(size: int, ratio: float) -> int:
  """k = max(1, floor(ratio * size)) (a 1e-9 slack keeps e.g. 0.29 * 100 at 29)."""
  return max(1, min(size, math.floor(size * ratio + 1e-9)))


def _itemsize(dtype) -> int:
  return int(np.dtype(dtype).itemsize)


def identity() -> Compressor:
  return Compressor("identity", lambda key, x: x,
                    lambda shape, dtype: int(np.prod(shape, dtype=np.int64)) * _itemsize(dtype))


def _scatter(flat_D, idx_K):
  return jnp.zeros_like(flat_D).at[idx_K].set(flat_D[idx_K])


def top_k(ratio: float) -> Compressor:
  def compress(key, x):
    del key
    flat = x.reshape(-1)
    idx_K = jax.lax.top_k(jnp.abs(flat), kept_entries(flat.size, ratio))[1]
    return _scatter(flat, idx_K).reshape(x.shape)

  def message_bytes(shape, dtype):
    return kept_entries(int(np.prod(shape, dtype=np.int64)), ratio) * (_itemsize(dtype) + INDEX_BYTES)
  return Compressor("top_k", compress, message_bytes)


def random_k(ratio: float) -> Compressor:
  def compress(key, x):
    flat = x.reshape(-1)
    k = kept_entries(flat.size, ratio)
    # k distinct entries, uniformly: the k largest of d uniform draws (no full permutation)
    idx_K = jax.lax.top_k(jax.random.uniform(key, (flat.size,)), k)[1]
    return _scatter(flat, idx_K).reshape(x.shape)

  def message_bytes(shape, dtype):
    return kept_entries(int(np.prod(shape, dtype=np.int64)), ratio) * (_itemsize(dtype) + INDEX_BYTES)
  return Compressor("random_k", compress, message_bytes)


def qsgd_scale(size: int, levels: int) -> float:
  """tau = 1 + min(d / s^2, sqrt(d) / s): the CHOCO paper's rescaling of QSGD."""
  return 1.0 + min(size / levels**2, math.sqrt(size) / levels)


def qsgd(levels: int) -> Compressor:
  s = int(levels)

  def compress(key, x):
    norm = jnp.sqrt(jnp.sum(jnp.square(x)))
    safe = jnp.where(norm > 0, norm, 1.0)
    level = s * jnp.abs(x) / safe
    lower = jnp.floor(level)
    up = jax.random.uniform(key, x.shape, x.dtype) < (level - lower)
    q = jnp.sign(x) * norm * (lower + up) / (s * qsgd_scale(x.size, s))
    return jnp.where(norm > 0, q, jnp.zeros_like(x)).astype(x.dtype)

  def message_bytes(shape, dtype):
    d = int(np.prod(shape, dtype=np.int64))
    bits = d * (1 + math.ceil(math.log2(s + 1)))
    return _itemsize(dtype) + -(-bits // 8)
  return Compressor("qsgd", compress, message_bytes)


def scaled_sign() -> Compressor:
  def compress(key, x):
    del key
    scale = jnp.sum(jnp.abs(x)) / x.size
    return (scale * jnp.where(x >= 0, 1.0, -1.0)).astype(x.dtype)

  def message_bytes(shape, dtype):
    return _itemsize(dtype) + -(-int(np.prod(shape, dtype=np.int64)) // 8)
  return Compressor("sign", compress, message_bytes)


def make_compressor(name: str, *, ratio: float = 1.0, levels: int = 16) -> Compressor:
  """The compressor `name` (one of COMPRESSORS); `ratio` for top_k / random_k, `levels` s for
  qsgd. Raises ValueError naming a bad value."""
  if name not in COMPRESSORS:
    raise ValueError(f"Unknown algorithm.compressor={name!r}; valid: {list(COMPRESSORS)}.")
  if name in ("top_k", "random_k"):
    if not 0 < ratio <= 1:
      raise ValueError(f"algorithm.compression_ratio must be in (0, 1] (the fraction of entries "
                       f"kept), got {ratio}.")
    return (top_k if name == "top_k" else random_k)(ratio)
  if name == "qsgd":
    if not (isinstance(levels, (int, np.integer)) and levels >= 1):
      raise ValueError(f"algorithm.quantization_levels must be an integer >= 1 (QSGD's s), got "
                       f"{levels!r}.")
    return qsgd(int(levels))
  return identity() if name == "identity" else scaled_sign()


def compress_tree(compressor: Compressor, key: jax.Array, tree: PyTree) -> PyTree:
  """Q applied leaf by leaf to one node's tree; leaf l draws with fold_in(key, l)."""
  leaves, treedef = jax.tree.flatten(tree)
  out = [compressor.compress(jax.random.fold_in(key, l), x) for l, x in enumerate(leaves)]
  return jax.tree.unflatten(treedef, out)


def tree_message_bytes(compressor: Compressor, tree: PyTree) -> int:
  """Bytes of one message: Q of every leaf of one node's tree (leaves without the node axis;
  arrays or ShapeDtypeStructs)."""
  return int(sum(compressor.message_bytes(tuple(x.shape), x.dtype) for x in jax.tree.leaves(tree)))
