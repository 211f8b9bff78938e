"""Vanishing variance (Tian, Al-Ars, Kitsak, Hofstee, arXiv 2404.04616): gossip learning on MNIST.

    python -m launch.main --config experiments/configs/vca_mnist.py --workdir runs/vca_mnist \
        --config.variance_correction.enabled=True

The paper's setting: 50 nodes on a random 8-regular graph, LeNet-5, MNIST split IID, local SGD
(lr 0.01, momentum 0.9, weight decay 1e-4), every node initialised independently (the vanishing
variance comes from averaging uncorrelated models), gossip learning with β = 0.5. Without the
correction the weight variance of every layer drops by an order of magnitude in the first rounds
and training is slow; with `variance_correction.enabled=True` it stays at its initial level and
accuracy climbs about as fast as FedAvg's (`--config.algorithm.name=fedavg`, all clients every
round). The
figure script `experiments/vca_figures.py` runs the three variants and plots both effects;
`model.name=cnn` is the 32/64-channel LeNet-5 style CNN of dfl/models.py (heavy on CPU: the
script's default is the FedAvg MLP).
"""
from experiments.configs import default


def get_config():
  c = default.get_config()
  c.num_nodes = 50

  c.data.name = "mnist"
  c.data.partition = "iid"

  c.model.name = "cnn"
  c.model.same_init = False  # independent initialisations: uncorrelated models

  c.topology.name = "random_regular"
  c.topology.degree = 8
  c.topology.weights = "metropolis_hastings"  # unused by gossip: W = βI + (1-β)A/deg

  c.algorithm.name = "gossip"
  c.algorithm.self_weight = 0.5
  c.algorithm.lr = 0.01
  c.algorithm.momentum = 0.9
  c.algorithm.weight_decay = 1e-4
  c.algorithm.local_steps = 10
  c.algorithm.batch_size = 32
  c.algorithm.client_fraction = 1.0  # fedavg reference: every client, every round

  c.variance_correction.enabled = False  # the paper's method: True (target follow_others)

  c.train.rounds = 100
  c.eval.every_rounds = 5
  c.eval.local_examples = 2000
  return c
