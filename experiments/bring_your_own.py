"""Bring your own model and data: a flax module and a numpy dataset, named by import path.

    python -m launch.main --config experiments/configs/default.py --workdir runs/byo \
        --config.model.name=experiments.bring_your_own:TinyNet --config.model.kwargs.width=32 \
        --config.data.name=experiments.bring_your_own:blobs --config.data.partition=natural \
        --config.num_nodes=8 --config.train.rounds=50

or from Python: `python -m experiments.bring_your_own runs/byo_python` (below). Any importable module works the
same way (installed, in the working directory, or on PYTHONPATH).
"""
import flax.linen as nn
import numpy as np


class TinyNet(nn.Module):
  width: int = 32
  num_classes: int = 10  # filled in from the dataset when model.kwargs does not set it

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(self.width)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes)(x)


def blobs(num_nodes: int = 8, per_node: int = 100, dim: int = 16, seed: int = 0) -> dict:
  """4 Gaussian classes; node i's samples come mostly from classes i mod 4 and i+1 mod 4, and
  `node_ids_train` says whose they are (data.partition=natural)."""
  rng = np.random.default_rng(seed)
  centers = 0.6 * rng.normal(size=(4, dim))

  def draw(labels):
    return (centers[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32)

  node_ids = np.repeat(np.arange(num_nodes), per_node)
  y_train = (node_ids + rng.integers(0, 2, len(node_ids))) % 4
  y_test = rng.integers(0, 4, 1000)
  return {"x_train": draw(y_train), "y_train": y_train, "x_test": draw(y_test), "y_test": y_test,
          "node_ids_train": node_ids}


if __name__ == "__main__":
  import sys

  from dfl.train import train_and_evaluate
  from experiments.configs import default

  config = default.get_config()
  config.num_nodes, config.train.rounds, config.data.partition = 8, 50, "natural"
  summary = train_and_evaluate(config, sys.argv[1], model=TinyNet(width=32, num_classes=4),
                               dataset=blobs())
  print(f"final accuracy {summary['final_test_accuracy']:.3f}")
