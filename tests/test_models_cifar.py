"""VGG-11 and ResNet-18 with GroupNorm: standard sizes, a plain params pytree, one training step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl.models import cross_entropy_loss, make_model

# Parameter counts of the CIFAR variants (ResNet-18's matches the usual 11,173,962 with BN,
# whose affine parameters GroupNorm shares).
EXPECTED_PARAMS = {("vgg11", 10): 9_753_674, ("resnet18", 10): 11_173_962,
                   ("resnet18", 100): 11_220_132}


@pytest.mark.parametrize("name,num_classes", sorted(EXPECTED_PARAMS))
def test_parameter_count(name, num_classes):
  model = make_model(name, num_classes)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  assert set(shapes) == {"params"}  # no batch statistics: nothing but trainable parameters
  assert sum(x.size for x in jax.tree.leaves(shapes)) == EXPECTED_PARAMS[(name, num_classes)]


def numpy_init(shapes, rng):
  """He-style random parameters drawn with numpy: far cheaper than the model's own init on CPU."""
  def leaf(path, s):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      return np.ones(s.shape, np.float32)
    if "bias" in name:
      return np.zeros(s.shape, np.float32)
    return (rng.normal(size=s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1]))).astype(np.float32)
  return jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.mark.parametrize("name", ["vgg11", "resnet18"])
def test_forward_backward_on_two_images(name):
  model = make_model(name, 10)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  params = numpy_init(jax.eval_shape(lambda: model.init(jax.random.key(0), x[:1]))["params"], rng)

  @jax.jit
  def step(params, x, y):
    loss, grads = jax.value_and_grad(cross_entropy_loss(model))(params, x, y)
    alone = model.apply({"params": params}, x[:1])
    return loss, grads, alone, model.apply({"params": params}, x)[:1]

  loss, grads, alone, together = step(params, x, jnp.array([1, 7]))
  assert np.isfinite(float(loss))
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) > 0.9 * len(norms)
  # Per-sample normalisation: one image's logits do not depend on the other in its batch.
  np.testing.assert_allclose(np.asarray(alone), np.asarray(together), rtol=1e-4, atol=1e-5)
