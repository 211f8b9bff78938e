"""VGG-11 and ResNet-18 with GroupNorm: standard sizes, a plain params pytree, one training step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl.models import cross_entropy_loss, make_model


def vgg11_count_by_hand(num_classes: int) -> int:
  """DisPFL's vgg.py, cfg 'A': Conv2d(cin, v, 3, padding=1) with bias, GroupNorm(32, v) with
  weight and bias, then the classifier Linear(512, num_classes)."""
  widths = [64, 128, 256, 256, 512, 512, 512, 512]
  cins = [3] + widths[:-1]
  convs = sum(cin * v * 9 + v for cin, v in zip(cins, widths))
  norms = sum(2 * v for v in widths)
  return convs + norms + 512 * num_classes + num_classes


# Parameter counts of the CIFAR variants (ResNet-18's matches the usual 11,173,962 with BN,
# whose affine parameters GroupNorm shares). VGG-11: 1,792 + 73,856 + 295,168 + 590,080 +
# 1,180,160 + 3 x 2,359,808 conv, 5,504 GroupNorm, 5,130 (CIFAR-10) / 51,300 (CIFAR-100) head.
EXPECTED_PARAMS = {("vgg11", 10): 9_231_114, ("vgg11", 100): 9_277_284,
                   ("resnet18", 10): 11_173_962, ("resnet18", 100): 11_220_132}


def test_vgg11_hand_count_agrees_with_the_written_numbers():
  assert vgg11_count_by_hand(10) == EXPECTED_PARAMS[("vgg11", 10)]
  assert vgg11_count_by_hand(100) == EXPECTED_PARAMS[("vgg11", 100)]


def test_vgg11_layers_and_initialisation_follow_dispfl():
  model = make_model("vgg11", 10, conv="im2col")
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  convs = sorted((k for k in params if k.startswith("Conv_")), key=lambda k: int(k[5:]))
  denses = [k for k in params if k.startswith("Dense_")]
  assert len(convs) == 8 and denses == ["Dense_0"]  # one linear head, no 512-512 layers
  assert params["Dense_0"]["kernel"].shape == (512, 10)
  for name in convs:
    kernel = np.asarray(params[name]["kernel"])
    cout = kernel.shape[-1]
    # kaiming_normal_(mode='fan_out', nonlinearity='relu'): std = sqrt(2 / (cout * 3 * 3)).
    np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (9 * cout)), rtol=0.1, err_msg=name)
    np.testing.assert_array_equal(np.asarray(params[name]["bias"]), np.zeros(cout))
  np.testing.assert_allclose(np.asarray(params["Dense_0"]["kernel"]).std(), 0.01, rtol=0.05)
  np.testing.assert_array_equal(np.asarray(params["Dense_0"]["bias"]), np.zeros(10))
  norm = params["GroupNorm_0"]
  np.testing.assert_array_equal(np.asarray(norm["scale"]), 1.0)
  np.testing.assert_array_equal(np.asarray(norm["bias"]), 0.0)


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


@pytest.mark.parametrize("module", ["dfedsam_cifar10", "dfedsam_cifar100"])
def test_dfedsam_configs_load_and_validate(module):
  import importlib
  from dfl.config_checks import validate_config
  get_config = importlib.import_module(f"experiments.configs.{module}").get_config
  for arg in ("dir0.3", "dir0.6", "path2"):
    for algorithm in ("dpsgd", "dfedavg", "dfedavgm", "dfedsam", "dfedsam_mgs", "fedavg", "fedsam"):
      c = get_config(arg)
      c.algorithm.name = algorithm
      if algorithm == "dfedavg":  # plain local SGD: the config's momentum is dfedavgm's
        c.algorithm.momentum = None
      validate_config(c)
  c = get_config()
  # da-dpfl fedml_dfedsam/*.sh: --cs random --frac 0.1 (10 of 100 per round), --rho 0.01,
  # --lr 0.1 --lr_decay 0.998 --epochs 5 --batch_size 128 --comm_round 500.
  assert (c.num_nodes, c.topology.name, c.topology.degree, c.topology.directed) == (
      100, "random_neighbors", 10, True)
  assert (c.algorithm.rho, c.algorithm.lr, c.algorithm.lr_decay) == (0.01, 0.1, 0.998)
  assert (c.algorithm.local_epochs, c.algorithm.batch_size, c.train.rounds) == (5, 128, 500)
  assert c.algorithm.client_fraction == 0.1
