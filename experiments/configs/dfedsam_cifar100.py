"""DFedSAM paper setup on CIFAR-100 (Shi et al., ICML 2023, arXiv 2302.04083): GPU-sized.

    python -m launch.main --config experiments/configs/dfedsam_cifar100.py:dir0.3 \
        --workdir runs/dfedsam_cifar100 --config.data.dir=/path/to/data \
        --config.algorithm.name=dfedsam_mgs

The argument picks the heterogeneity: dir0.3 | dir0.6 | path10 (Path(k), any k).
Data: <data.dir>/cifar100/ or <data.dir>/cifar-100-python/ (fine labels, 100 classes).
Setup as experiments/configs/dfedsam_cifar10.py (100 nodes, ring, 5 local epochs of batch 128,
lr 0.1 decayed 0.998, Q = 4 for dfedsam_mgs, 1000 rounds) with ResNet-18 (GroupNorm).
Expected (the paper's claim, not measured on this codebase): the same ordering as on CIFAR-10,
DFedSAM-MGS > DFedSAM > DFedAvgM > DFedAvg > D-PSGD, at much lower absolute accuracy.
"""
from experiments.configs import dfedsam_cifar10


def get_config(arg: str = "dir0.3"):
  c = dfedsam_cifar10.get_config(arg)
  c.data.name = "cifar100"
  c.model.name = "resnet18"
  return c
