"""Vanishing variance (Tian, Al-Ars, Kitsak, Hofstee, arXiv 2404.04616): gossip learning on MNIST.

    python -m launch.main --config experiments/configs/vca_mnist.py --workdir runs/vca_mnist \
        --config.variance_correction.enabled=True

What it should show: without the correction the weight variance of every layer drops by an
order of magnitude in the first rounds (averaging uncorrelated models) and training is slow;
with `variance_correction.enabled=True` it stays at its initial level and accuracy climbs about
as fast as FedAvg's (`--config.algorithm.name=fedavg`, all clients every round). The figure
script `experiments/vca_figures.py` runs the three variants and plots both effects.

Set as the authors' DFL_torch (github.com/twoentartian/DFL_torch) runs it:
py_src/config_file_util/default_config.py with preset_network='GL', preset_variance_correction='VC':
* 50 nodes on a random 8-regular graph (nx.random_regular_graph(8, 50)).
* LeNet-5 (`model.name=lenet5`: py_src/ml_setup_base/mnist_models.py lenet5_mnist, 6/16 conv,
  120/84 fc, Xavier-uniform weights, zero biases), every node initialised independently
  (ml_setup.re_initialize_model with a fresh seed per node).
* SGD lr 0.01, momentum 0.9, weight decay 1e-4, no schedule; the optimizer lives for the whole
  run (momentum persists across averaging), batch size 64 (training_batch_size).
* One minibatch per training (preset_training_batch_count = 1), the model sent to every
  neighbour after each training (P = 1), so one round here = one training + one averaging:
  `local_steps = 1`.
* ConservativeModelAverager(0.5): x_i <- 0.5 x_i + 0.5 mean(received) -> `gossip`,
  self_weight 0.5; with the corrector VarianceCorrector(FollowOthers) -> the variance_correction
  fields below (py_src/model_variance_correct.py: torch.var, eps 1e-4 added inside the square
  root, every tensor but running statistics, plain mean over the received models).

Unknowns and deviations (not guessed):
* Horizon: default_config.py runs max_tick = 1000 ticks with a training every 8-12 ticks,
  about 100 trainings per node; `train.rounds = 100` follows it. The paper's figures' own
  horizon per experiment is not in the code read here.
* Schedule: DFL_torch is asynchronous (random 8-12 tick gaps; a node averages once deg(i)
  models arrived, possibly two of one neighbour); here rounds are synchronous.
* Data: every DFL_torch node draws its batches from the whole MNIST training set
  (label_distribution_default -> a shuffled loader over all 60k), with RandomRotation(5) and
  RandomCrop(28, padding=2); here `data.partition = iid` gives disjoint shards of 1,200 and no
  augmentation.
* Evaluation: DFL_torch tests every 100 ticks on a subset (ServiceTestAccuracyLossRecorder);
  here every `eval.every_rounds` rounds on `eval.local_examples` test images per node.
"""
from experiments.configs import default


def get_config():
  c = default.get_config()
  c.num_nodes = 50

  c.data.name = "mnist"
  c.data.partition = "iid"

  c.model.name = "lenet5"
  c.model.same_init = False  # independent initialisations: uncorrelated models

  c.topology.name = "random_regular"
  c.topology.degree = 8
  c.topology.weights = "metropolis_hastings"  # unused by gossip: W = βI + (1-β)A/deg

  c.algorithm.name = "gossip"
  c.algorithm.self_weight = 0.5
  c.algorithm.lr = 0.01
  c.algorithm.momentum = 0.9
  c.algorithm.weight_decay = 1e-4
  c.algorithm.local_steps = 1
  c.algorithm.batch_size = 64
  c.algorithm.client_fraction = 1.0  # fedavg reference: every client, every round

  c.variance_correction.enabled = False  # the paper's method: True
  c.variance_correction.target = "follow_others"
  c.variance_correction.received_weights = "uniform"
  c.variance_correction.estimator = "unbiased"  # torch.var
  c.variance_correction.eps_mode = "additive"
  c.variance_correction.eps = 1e-4
  c.variance_correction.norm_layers = "correct"  # LeNet-5 has none; DFL_torch's rule
  c.variance_correction.tensors = "all"
  c.variance_correction.strength = 1.0

  c.train.rounds = 100
  c.eval.every_rounds = 5
  c.eval.local_examples = 2000
  c.eval.local_subset = "shared"  # all nodes on the first 2000, as the README measured
  return c
