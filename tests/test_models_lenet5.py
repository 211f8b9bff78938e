"""LeNet-5 of the vanishing-variance paper (DFL_torch py_src/models/lenet/lenet.py): its layer
shapes, parameter count and Xavier-uniform / zero-bias initialisation, checked by hand."""
import jax
import jax.numpy as jnp
import numpy as np

from dfl.models import cross_entropy_loss, make_model

# Layer shapes from DFL_torch's LeNet5, in flax layout: Conv2d(1, 6, 5, padding=2),
# Conv2d(6, 16, 5), Linear(16*5*5, 120), Linear(120, 84), Linear(84, 10).
SHAPES = {"Conv_0": (5, 5, 1, 6), "Conv_1": (5, 5, 6, 16), "Dense_0": (400, 120),
          "Dense_1": (120, 84), "Dense_2": (84, 10)}
# fan_in, fan_out as torch computes them for xavier_uniform_ (receptive field 5*5 for convs).
FANS = {"Conv_0": (1 * 25, 6 * 25), "Conv_1": (6 * 25, 16 * 25), "Dense_0": (400, 120),
        "Dense_1": (120, 84), "Dense_2": (84, 10)}


def test_shapes_and_parameter_count():
  model = make_model("lenet5", 10)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))))
  params = shapes["params"]
  assert {k: v["kernel"].shape for k, v in params.items()} == SHAPES
  # 6*25+6 + 16*150+16 + 400*120+120 + 120*84+84 + 84*10+10
  hand = 156 + 2416 + 48120 + 10164 + 850
  assert hand == 61_706
  assert sum(x.size for x in jax.tree.leaves(shapes)) == hand
  cnn = jax.eval_shape(lambda: make_model("cnn", 10).init(jax.random.key(0),
                                                          jnp.zeros((1, 28, 28, 1))))
  assert round(sum(x.size for x in jax.tree.leaves(cnn)) / hand) == 27  # not the same network


def test_initialisation_is_xavier_uniform_with_zero_bias():
  model = make_model("lenet5", 10, conv="im2col")
  x = jnp.zeros((1, 28, 28, 1))
  # 16 independent draws, so that even conv1's 150 weights give a usable variance estimate.
  draws = jax.jit(jax.vmap(lambda k: model.init(k, x)["params"]))(
      jax.random.split(jax.random.key(0), 16))
  for name, (fan_in, fan_out) in FANS.items():
    w = np.asarray(draws[name]["kernel"]).ravel()
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(w).max() <= bound, name
    assert np.abs(w).max() > 0.95 * bound, name  # uniform up to the bound, not a normal
    # U(-b, b) has variance b^2 / 3 = 2 / (fan_in + fan_out); sample sd ~ sqrt(0.8 / n) relative.
    np.testing.assert_allclose(w.var(), 2.0 / (fan_in + fan_out), rtol=0.08, err_msg=name)
    assert abs(w.mean()) < 4 * bound / np.sqrt(3 * w.size), name
    np.testing.assert_array_equal(np.asarray(draws[name]["bias"]), 0.0)
  # Independent keys give independent models (the paper's uncorrelated initialisations).
  k = np.asarray(draws["Dense_0"]["kernel"]).reshape(16, -1)
  assert abs(np.corrcoef(k[0], k[1])[0, 1]) < 0.05


def test_forward_and_formulations_agree():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 28, 28, 1)), jnp.float32)
  y = jnp.array([0, 3, 9])
  im2col, xla = make_model("lenet5", 10, conv="im2col"), make_model("lenet5", 10, conv="xla")
  params = xla.init(jax.random.key(1), x)["params"]
  assert xla.apply({"params": params}, x).shape == (3, 10)
  (l1, g1), (l2, g2) = (jax.value_and_grad(cross_entropy_loss(m))(params, x, y)
                        for m in (im2col, xla))
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5), g1, g2)
