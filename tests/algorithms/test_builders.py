"""The config -> builder plumbing of the local-training options: each built round traces to the
same program as the factory called with the intended arguments, every builder applies
BuildContext.augment, and bad values fail with the field named."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfl.algorithms import ALGORITHMS, ONE_GRADIENT_PER_ROUND, BuildContext, build_algorithm
from dfl.algorithms.base import RoundInputs
from dfl.algorithms.dfedavg import dfedavg
from dfl.algorithms.dfedsam import dfedsam
from dfl.algorithms.dpsgd import dpsgd
from dfl.config_checks import validate_config
from dfl.mixing import DenseMixing
from experiments.configs import default
from tests.algorithms._tiny import N, ring_W, tiny_problem

SIZES = (12, 7, 5, 12)


def algorithm_config(**fields):
  a = default.get_config().algorithm
  a.batch_size = 4
  for name, value in fields.items():
    a[name] = value
  return a


def program(algorithm, params_N, data) -> str:
  state = algorithm.init(params_N)
  key = jax.random.key(0)
  inputs = RoundInputs(jnp.int32(0), key, DenseMixing(jnp.asarray(ring_W(), jnp.float32)), data,
                       key)
  return str(jax.make_jaxpr(algorithm.round)(state, inputs).jaxpr)


@pytest.mark.parametrize("fields, factory", [
    (dict(name="dpsgd"), lambda f: dpsgd(f, lr=0.1, batch_size=4)),  # default: one step
    (dict(name="dpsgd", local_steps=3), lambda f: dpsgd(f, lr=0.1, batch_size=4, local_steps=3)),
    (dict(name="dpsgd", local_epochs=1),
     lambda f: dpsgd(f, lr=0.1, batch_size=4, local_steps=3, max_epochs=1,
                     num_steps_N=np.array([3, 2, 2, 3], np.int32))),
    (dict(name="dfedavg"), lambda f: dfedavg(f, lr=0.1, local_steps=5, batch_size=4)),
    (dict(name="dfedavgm", keep_optimizer_state=True, clip_norm=2.0),
     lambda f: dfedavg(f, lr=0.1, local_steps=5, batch_size=4, momentum=0.9,
                       keep_optimizer_state=True, clip_norm=2.0)),
    (dict(name="dfedsam", clip_norm=1.0, local_steps=2),
     lambda f: dfedsam(f, lr=0.1, rho=0.05, local_steps=2, batch_size=4, clip_norm=1.0)),
])
def test_config_builds_the_intended_program(fields, factory):
  loss_fn, params_N, data = tiny_problem(sizes=SIZES)
  ctx = BuildContext(loss_fn, N, np.array(SIZES))
  built = build_algorithm(algorithm_config(**fields), ctx)
  assert program(built, params_N, data) == program(factory(loss_fn), params_N, data)


def test_options_change_the_program():
  """The comparison above can fail: the options do reach the traced round."""
  loss_fn, params_N, data = tiny_problem(sizes=SIZES)
  ctx = BuildContext(loss_fn, N, np.array(SIZES))
  base = program(build_algorithm(algorithm_config(name="dfedavgm"), ctx), params_N, data)
  for fields in (dict(clip_norm=1.0), dict(keep_optimizer_state=True), dict(local_steps=2)):
    other = build_algorithm(algorithm_config(name="dfedavgm", **fields), ctx)
    assert program(other, params_N, data) != base, fields


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_builder_augments_every_local_minibatch(name):
  seen = []

  def augment(key, x_B):
    seen.append((x_B.shape, jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)))
    return -x_B

  loss_fn, params_N, data = tiny_problem(sizes=SIZES)
  fields = dict(name=name, local_steps=1 if name in ("dpsgd", *ONE_GRADIENT_PER_ROUND) else 2)
  if name == "modest":
    fields["sample_size"] = 2
  ctx = BuildContext(loss_fn, N, np.array(SIZES), augment=augment)
  program(build_algorithm(algorithm_config(**fields), ctx), params_N, data)
  assert seen and all(shape == (4, 5) and typed for shape, typed in seen)  # x_B of batch 4


@pytest.mark.parametrize("fields, message", [
    (dict(clip_norm=0.0), "algorithm.clip_norm"),
    (dict(clip_norm=-1.0), "algorithm.clip_norm"),
    (dict(local_steps=0), "algorithm.local_steps"),
    (dict(local_steps=300), "algorithm.local_steps"),
    (dict(local_epochs=300), "algorithm.local_epochs"),
    (dict(name="fedavg", keep_optimizer_state=True), "algorithm.keep_optimizer_state"),
    (dict(name="dpsgd", keep_optimizer_state=True), "algorithm.keep_optimizer_state"),
    (dict(name="dpsgd", compressor="top_k"), "algorithm.compressor='top_k' is only used by"),
    (dict(name="choco", compressor="zip"), "algorithm.compressor='zip'; valid"),
    (dict(name="choco", compressor="qsgd", compression_ratio=0.5), "algorithm.compression_ratio"),
    (dict(name="choco", compressor="top_k", compression_ratio=0.0), "algorithm.compression_ratio"),
    (dict(name="choco", compressor="top_k", quantization_levels=4), "algorithm.quantization_levels"),
    (dict(name="choco", consensus_step=1.5), "algorithm.consensus_step"),
])
def test_bad_values_name_the_field(fields, message):
  c = default.get_config()
  for name, value in fields.items():
    c.algorithm[name] = value
  with pytest.raises(ValueError, match=message):
    validate_config(c)


def test_defaults_validate_and_keep_state_is_allowed_for_the_local_update_algorithms():
  for name in ("dfedavg", "dfedavgm", "dfedsam", "dfedsam_mgs"):
    c = default.get_config()
    c.algorithm.name = name
    c.algorithm.keep_optimizer_state = True
    c.algorithm.clip_norm = 10.0
    validate_config(c)
