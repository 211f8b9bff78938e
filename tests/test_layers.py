"""dfl/layers.py: the im2col convolution and reshape max-pool equal flax's nn.Conv / nn.max_pool."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl.config_checks import validate_config
from dfl.layers import Conv, max_pool_2x2, resolve_conv_impl
from dfl.models import cross_entropy_loss, make_model
from tests.conftest import tiny_config


@pytest.mark.parametrize("kernel,stride", [(5, 1), (3, 1), (3, 2), (1, 2), (4, 1)])
@pytest.mark.parametrize("impl", ["im2col", "xla"])
def test_conv_has_nn_conv_parameters_values_and_gradients(kernel, stride, impl):
  x = jax.random.normal(jax.random.key(1), (3, 9, 10, 4))
  ref = nn.Conv(6, (kernel, kernel), (stride, stride), padding="SAME")
  ours = Conv(6, (kernel, kernel), (stride, stride), impl=impl)
  params = ref.init(jax.random.key(0), x)
  jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.key(0), x), params)
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
  loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))
  grads = jax.grad(loss(ours), argnums=(0, 1))(params, x)
  want = jax.grad(loss(ref), argnums=(0, 1))(params, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), grads, want)


@pytest.mark.parametrize("kernel,stride", [(5, 1), (3, 2), (4, 1)])
@pytest.mark.parametrize("impl", ["im2col", "xla"])
def test_valid_padding_equals_nn_conv(kernel, stride, impl):
  # LeNet-5's second convolution has no padding: 'VALID' must shrink [H, W] like nn.Conv.
  x = jax.random.normal(jax.random.key(4), (2, 11, 9, 3))
  ref = nn.Conv(5, (kernel, kernel), (stride, stride), padding="VALID")
  ours = Conv(5, (kernel, kernel), (stride, stride), impl=impl, padding="VALID")
  params = ref.init(jax.random.key(0), x)
  y = ours.apply(params, x)
  assert y.shape == (2, (11 - kernel) // stride + 1, (9 - kernel) // stride + 1, 5)
  np.testing.assert_allclose(y, ref.apply(params, x), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="padding='CIRCULAR'.*VALID"):
    Conv(5, (3, 3), padding="CIRCULAR").init(jax.random.key(0), x)


def test_conv_initialisers_are_passed_through():
  x = jnp.zeros((1, 6, 6, 2))
  ones = Conv(4, (3, 3), kernel_init=nn.initializers.ones, bias_init=nn.initializers.ones)
  params = ones.init(jax.random.key(0), x)["params"]
  np.testing.assert_array_equal(params["kernel"], np.ones((3, 3, 2, 4)))
  np.testing.assert_array_equal(params["bias"], np.ones(4))


def test_max_pool_2x2_equals_nn_max_pool_including_odd_sizes():
  for shape in [(2, 8, 8, 3), (2, 7, 9, 1)]:
    x = jax.random.normal(jax.random.key(2), shape)
    np.testing.assert_array_equal(max_pool_2x2(x), nn.max_pool(x, (2, 2), (2, 2)))


def test_cnn_formulations_agree_on_loss_and_gradient():
  x = jax.random.normal(jax.random.key(3), (4, 28, 28, 1))
  y = jnp.arange(4)
  im2col, xla = make_model("cnn", 10, conv="im2col"), make_model("cnn", 10, conv="xla")
  params = xla.init(jax.random.key(0), x)["params"]
  (l1, g1), (l2, g2) = (jax.value_and_grad(cross_entropy_loss(m))(params, x, y) for m in (im2col, xla))
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5), g1, g2)


def test_conv_impl_auto_resolves_per_backend_and_bad_names_are_named():
  assert resolve_conv_impl("auto", "cpu") == "im2col"
  assert resolve_conv_impl("auto", "gpu") == "xla"
  assert resolve_conv_impl("xla", "cpu") == "xla"
  with pytest.raises(ValueError, match="model.conv='fft'.*im2col"):
    resolve_conv_impl("fft")
  with pytest.raises(ValueError, match="model.conv.*'fft'"):
    validate_config(tiny_config(model__conv="fft"))
