"""Compressors (dfl/aggregation/compressors.py) against hand-computed vectors and byte counts."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl.aggregation.compressors import compress_tree, make_compressor, tree_message_bytes

KEY = jax.random.key(3)


def q(name, x, key=KEY, **kw):
  return np.asarray(make_compressor(name, **kw).compress(key, jnp.asarray(x, jnp.float32)))


def nbytes(name, shape, **kw):
  return make_compressor(name, **kw).message_bytes(shape, np.float32)


def test_identity():
  np.testing.assert_array_equal(q("identity", [1.0, -2.0, 3.0]), [1.0, -2.0, 3.0])
  assert nbytes("identity", (3,)) == 12 and nbytes("identity", (5, 7)) == 140


def test_top_k_keeps_the_largest_magnitudes():
  x = [[0.5, -3.0], [1.0, 2.0]]  # d = 4, ratio 0.5: k = 2, the -3 and the 2
  np.testing.assert_array_equal(q("top_k", x, ratio=0.5), [[0.0, -3.0], [0.0, 2.0]])
  np.testing.assert_array_equal(q("top_k", [0.5, -1.0, 2.0], ratio=0.01), [0, 0, 2.0])  # k >= 1
  assert nbytes("top_k", (2, 2), ratio=0.5) == 2 * (4 + 4)  # float32 values + int32 indices
  assert nbytes("top_k", (100,), ratio=0.29) == 29 * 8  # floor(29.0), not 28.999...
  assert nbytes("top_k", (7,), ratio=0.01) == 8


def test_random_k_keeps_k_entries_uniformly_unscaled():
  x = np.arange(1.0, 5.0)  # d = 4, ratio 0.5: k = 2
  kept = np.zeros(4)
  for i in range(400):
    out = q("random_k", x, key=jax.random.key(i), ratio=0.5)
    nz = out != 0
    assert nz.sum() == 2
    np.testing.assert_array_equal(out[nz], x[nz])  # kept entries as they are (no d/k rescale)
    kept += nz
  np.testing.assert_allclose(kept / 400, 0.5, atol=0.08)
  assert nbytes("random_k", (4,), ratio=0.5) == 16


def test_qsgd_exact_levels_and_rescaling():
  # s = 5, x = (3, 4, 0, 0): ||x|| = 5, s|x|/||x|| = (3, 4, 0, 0) are whole levels, so no
  # randomness; tau = 1 + min(d/s^2, sqrt(d)/s) = 1 + min(4/25, 2/5) = 1.16.
  np.testing.assert_allclose(q("qsgd", [3.0, 4.0, 0.0, 0.0], levels=5),
                             np.array([3.0, 4.0, 0.0, 0.0]) / 1.16, rtol=1e-6)
  np.testing.assert_array_equal(q("qsgd", [0.0, 0.0], levels=5), [0.0, 0.0])  # zero norm
  # d = 4, s = 5: per entry 1 sign bit + ceil(log2 6) = 3 level bits = 16 bits = 2 bytes, + the
  # float32 norm.
  assert nbytes("qsgd", (4,), levels=5) == 2 + 4
  assert nbytes("qsgd", (3,), levels=1) == 1 + 4  # 3 * (1 + 1) = 6 bits -> 1 byte


def test_qsgd_is_unbiased_before_its_rescaling():
  x = np.array([3.0, -4.0])  # s = 1: levels 0.6 and 0.8, rounded up with those probabilities
  tau = 1 + min(2 / 1, math.sqrt(2) / 1)
  draws = np.stack([q("qsgd", x, key=jax.random.key(i), levels=1) for i in range(2000)])
  assert set(np.round(np.abs(draws).ravel() * tau, 4)) <= {0.0, 5.0}  # 0 or ||x|| / s
  np.testing.assert_allclose(draws.mean(0) * tau, x, atol=0.3)


def test_scaled_sign():
  # ||x||_1 / d = 6 / 4 = 1.5; an entry 0 is sent as +.
  np.testing.assert_allclose(q("sign", [1.0, -2.0, 0.0, 3.0]), [1.5, -1.5, 1.5, 1.5])
  assert nbytes("sign", (4,)) == 1 + 4 and nbytes("sign", (9,)) == 2 + 4


def test_compression_is_per_leaf():
  tree = {"a": jnp.asarray([5.0, 4.0, 3.0, 2.0]), "b": jnp.asarray([[0.1, 0.2, 0.3],
                                                                    [0.4, 0.5, 0.6]])}
  comp = make_compressor("top_k", ratio=0.5)
  out = compress_tree(comp, KEY, tree)
  # Per leaf: 2 of a and 3 of b (flattened, the top 5 of 10 would all be a's 4 and b's 0.6).
  np.testing.assert_array_equal(out["a"], [5.0, 4.0, 0.0, 0.0])
  np.testing.assert_allclose(out["b"], [[0, 0, 0], [0.4, 0.5, 0.6]])
  assert tree_message_bytes(comp, tree) == (2 + 3) * 8
  sign = make_compressor("sign")
  np.testing.assert_allclose(compress_tree(sign, KEY, tree)["a"], [3.5] * 4)  # 14 / 4
  assert tree_message_bytes(sign, tree) == (1 + 4) + (1 + 4)


@pytest.mark.parametrize("kw, field", [(dict(name="top_k", ratio=0.0), "compression_ratio"),
                                       (dict(name="random_k", ratio=1.5), "compression_ratio"),
                                       (dict(name="qsgd", levels=0), "quantization_levels"),
                                       (dict(name="zip"), "algorithm.compressor")])
def test_bad_values_name_the_field(kw, field):
  name = kw.pop("name")
  with pytest.raises(ValueError, match=field):
    make_compressor(name, **kw)
