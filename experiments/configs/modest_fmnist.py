"""MoDeST on non-IID Fashion-MNIST (the settings of `modest_mnist.py`, another dataset).

    python -m launch.main --config experiments/configs/modest_fmnist.py --workdir runs/modest_fmnist

Shows decentralized sampling converging like FedAvg with the same number of participants per
round; `experiments/modest_comparison.py` runs it against D-PSGD and FedAvg and counts bytes.
"""
from experiments.configs import modest_mnist


def get_config():
  c = modest_mnist.get_config()
  c.data.name = "fashion_mnist"
  return c
