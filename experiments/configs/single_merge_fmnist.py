"""A single global merge (Zhu et al. 2025, "A Single Merging Suffices"), CPU-sized, on Fashion-MNIST.

    python -m launch.sweep --config experiments/configs/single_merge_fmnist.py \
        --root runs/single_merge --config.data.dir=/path/to/data --parallel 2
    python -m launch.report runs/single_merge --metric=test_accuracy_local_mean

The reference's figure 1 (Raiden-Zhu/ICLR-2026-Grokking-in-Decentralized-Learning,
configs/examples/figure1_single_merge_resnet18.yaml): 32 nodes, Dirichlet(0.1) labels, local SGD
(lr 0.01, weight decay 5e-4, batch 128) between exchanges on its `random` graph with expected
degree r = 0.2 (`topology.name=random_pull`), redrawn every exchange, and (`r_schedule: truncate`,
point1 0.997) one switch to the complete graph at the very end. Here: DFedAvg (local SGD, then one
gossip step) on that graph, the FedAvg MLP (784-200-200-10) instead of ResNet-18 on TinyImageNet,
10 local steps per round instead of 100, 100 rounds, and the two arms of the figure: no merge vs
a single final merge (`topology.schedule=final_merge`, the last round on the complete graph).
Expected: the local models (`test_accuracy_local_mean`) stay far apart under r = 0.2; their
average after the one merge (`test_accuracy`) is much better than any of them, and
`summary.json`'s `before_merge_*` fields give the same run's figures just before the merge.
Deviations from the reference: the model, data and step counts above; its point1 puts the switch
at 99.7% of 30,000 steps (about 90 exchanges on the complete graph), here one round; its data are
resampled per node (`data_sampling_mode: resample`, 4096 samples per node) where here each node
holds a disjoint Dirichlet shard.
"""
from experiments.configs import default


def get_config():
  c = default.get_config()
  c.num_nodes = 32
  c.data.name = "fashion_mnist"
  c.data.partition = "dirichlet"
  c.data.alpha = 0.1
  c.model.name = "mlp"
  c.model.hidden = (200, 200)
  c.topology.name = "random_pull"
  c.topology.expected_degree = 0.2
  c.algorithm.name = "dfedavg"
  c.algorithm.lr = 0.01
  c.algorithm.weight_decay = 5e-4
  c.algorithm.batch_size = 128
  c.algorithm.local_steps = 10
  c.train.rounds = 100
  c.eval.every_rounds = 10
  c.eval.local_examples = 1000
  c.eval.local_subset = "shared"  # all nodes on the first 1000, as the README measured
  return c


def get_sweep():
  return [{"topology.schedule": ["none", "final_merge"]}, {"seed": [0, 1, 2]}]
