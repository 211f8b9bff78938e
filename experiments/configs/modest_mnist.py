"""MoDeST on non-IID MNIST: 64 nodes, a sample of s = 10 per round, one aggregator.

    python -m launch.main --config experiments/configs/modest_mnist.py --workdir runs/modest_mnist

Shows decentralized sampling converging like FedAvg with the same number of participants per
round; `experiments/modest_comparison.py` runs it against D-PSGD and FedAvg and counts bytes.
Churn: add e.g. `--config.algorithm.membership=100:fail:0.8` (80% of the nodes stop answering
at round 100) or `--config.algorithm.membership=60:join:16` (with num_nodes counting joiners).
"""
from experiments.configs import default


def get_config():
  c = default.get_config()
  c.num_nodes = 64
  c.data.name = "mnist"
  c.data.partition = "dirichlet"
  c.data.alpha = 0.3  # strong label skew
  c.model.name = "mlp"
  c.model.hidden = (200, 200)
  c.algorithm.name = "modest"
  c.algorithm.lr = 0.05
  c.algorithm.local_steps = 10
  c.algorithm.batch_size = 32
  c.algorithm.sample_size = 10
  c.algorithm.aggregators = 1
  c.algorithm.success_fraction = 1.0
  c.algorithm.client_fraction = 10 / 64  # fedavg with the same participants per round
  c.topology.name = "ring"  # D-PSGD's graph when run from this config
  c.train.rounds = 200
  c.eval.every_rounds = 10
  c.eval.local_examples = 1000
  c.eval.local_subset = "shared"  # all nodes on the first 1000, as the README measured
  return c
