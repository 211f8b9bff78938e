"""Tiny flax modules with state or dropout for tests/test_model_state.py, importable by path
(model.name="tests._stateful_models:InputBN") so that subprocesses and resumes find them."""
import flax.linen as nn

MOMENTUM = 0.9


class InputBN(nn.Module):
  """BatchNorm of the flattened input, then a linear head: its statistics depend on the data
  alone, so they can be computed by hand from the batches a node saw."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    x = x.reshape(x.shape[0], -1)
    x = nn.BatchNorm(use_running_average=not train, momentum=MOMENTUM)(
        x, mask=None if mask is None else mask[:, None])
    return nn.Dense(self.num_classes)(x)


class HiddenBN(nn.Module):
  """Dense - BatchNorm - ReLU - Dense: the statistics depend on the first layer's weights."""
  width: int = 8
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    x = nn.Dense(self.width)(x.reshape(x.shape[0], -1))
    x = nn.BatchNorm(use_running_average=not train, momentum=MOMENTUM)(
        x, mask=None if mask is None else mask[:, None])
    return nn.Dense(self.num_classes)(nn.relu(x))


class WithDropout(nn.Module):
  """Dense - ReLU - Dropout(rate) - Dense; no state, but a `train` argument."""
  rate: float = 0.5
  width: int = 16
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Dense(self.width)(x.reshape(x.shape[0], -1)))
    x = nn.Dropout(self.rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


class WithoutDropout(nn.Module):
  """WithDropout's network without the dropout layer (same parameters): a stateless model."""
  width: int = 16
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(self.width)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes)(x)
