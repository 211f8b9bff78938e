"""The DFedSAM family in the lineage's setup, on Fashion-MNIST and sized for 2 CPU cores.

    python -m launch.sweep --config experiments/configs/dfedsam_fmnist_lineage.py \
        --root runs/dfedsam_lineage --config.data.dir=/path/to/data --parallel 2
    python -m launch.report runs/dfedsam_lineage

Everything the lineage's scripts fix is taken from experiments/configs/dfedsam_cifar10.py (see
its docstring for the files: EricLoong/da-dpfl fedml_dfedsam/cifar10.sh and main_dfedsam.py,
after rong-dai/DisPFL): 100 clients, each round averaging itself with 10 clients drawn
uniformly (random_neighbors, degree 10, directed, uniform weights), DisPFL's per-client
Dirichlet(0.3) partition (dirichlet_client), batch 128, lr 0.1 decayed by 0.998 per round,
momentum 0.9 and a fresh optimizer every round, rho 0.01, Q = 4 gossip steps for DFedSAM-MGS.
D-PSGD runs as DisPFL's baseline does: momentum 0 and weight decay 5e-4 (zipped with the method).
CPU-sized deviations: Fashion-MNIST and the FedAvg paper's MLP (784-200-10) instead of CIFAR and
VGG-11 / ResNet-18 (no CIFAR here, and convolutions are slow on 2 cores); 1 local epoch per round
instead of 5 and 30 rounds instead of 500; D-PSGD without DisPFL's gradient clipping at 10.
"""
from experiments.configs import dfedsam_cifar10


def get_config(arg: str = "dir0.3"):
  c = dfedsam_cifar10.get_config(arg)
  c.data.name = "fashion_mnist"
  c.model.name = "mlp"
  c.model.hidden = (200,)
  c.algorithm.local_epochs = 1
  c.train.rounds = 30
  c.eval.every_rounds = 5
  return c


def get_sweep():
  return [{"algorithm.name": ["dpsgd", "dfedavgm", "dfedsam", "dfedsam_mgs"],
           "algorithm.momentum": [0.0, 0.9, 0.9, 0.9],
           "algorithm.weight_decay": [5e-4, 0.0, 0.0, 0.0]},
          {"seed": [0, 1, 2]}]
