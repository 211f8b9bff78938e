"""The DFedSAM comparison, CPU-sized, on Fashion-MNIST: a laptop runs it in minutes.

    python -m launch.main --config experiments/configs/dfedsam_fmnist.py:dir0.3 \
        --workdir runs/dfedsam_fmnist --config.data.dir=/work/shared/data \
        --config.algorithm.name=dfedsam_mgs

The argument picks the heterogeneity: dir0.3 | dir0.6 (Dirichlet alpha) | path<k>.
Setup: 100 nodes on a ring, the FedAvg paper's MLP with one hidden layer of 200, 10 local SGD
steps of batch 32 per round, lr 0.1, rho = 0.05, Q = 4 for dfedsam_mgs, 100 rounds.
experiments/dfedsam_comparison.py runs all seven methods on it (smaller by default) and writes
the table and figure of the README's "DFedSAM comparison" section.
Expected (measured at the comparison's smaller size, 16 nodes x 40 rounds, README "DFedSAM
comparison"): about 0.79-0.81 accuracy of the averaged model for DFedAvg(M)/DFedSAM(-MGS), D-PSGD
about 5 points lower; DFedSAM-MGS has the lowest consensus distance (about 5x below DFedSAM) and
the best mean local accuracy; at this scale SAM itself does not beat DFedAvg.
"""
from experiments.configs import default
from experiments.configs.dfedsam_cifar10 import set_heterogeneity


def get_config(arg: str = "dir0.3"):
  c = default.get_config()
  c.num_nodes = 100
  c.data.name = "fashion_mnist"
  set_heterogeneity(c, arg)
  c.model.name = "mlp"
  c.model.hidden = (200,)
  c.topology.name = "ring"
  c.algorithm.name = "dfedsam"
  c.algorithm.lr = 0.1
  c.algorithm.local_steps = 10
  c.algorithm.batch_size = 32
  c.algorithm.rho = 0.05
  c.algorithm.client_fraction = 0.1
  c.train.rounds = 100
  c.eval.every_rounds = 10
  c.eval.local_examples = 1000
  c.eval.local_subset = "shared"  # all nodes on the first 1000, as the README measured
  return c
