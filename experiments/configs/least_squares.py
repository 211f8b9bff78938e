"""Heterogeneous least squares (dfl/data/least_squares.py): gradient tracking on a ring of 16.

    python -m launch.main --config experiments/configs/least_squares.py --workdir runs/ls \
        --config.data.heterogeneity=1.0 --config.algorithm.name=dpsgd

Every node's loss f_i(x) = (1/2n)||A_i x - b_i||^2 is 1-smooth and 0.1-strongly convex; with
full batches (algorithm.batch_size=0) and the constant step 0.05, gradient tracking and exact
diffusion drive ||x̄ - x*||^2 (metrics.jsonl: distance_to_optimum) to float32 precision,
while D-PSGD (and QGM, which shares its fixed point) stop at a distance that grows with
data.heterogeneity. `experiments/heterogeneity_sweep.py` runs the comparison.
"""
from experiments.configs import default


def get_config():
  c = default.get_config()
  c.data.name = "least_squares"
  c.data.heterogeneity = 1.0
  c.data.dim = 10
  c.data.samples_per_node = 32
  c.model.name = "linear"
  c.topology.name = "ring"
  c.algorithm.name = "gradient_tracking"
  c.algorithm.batch_size = 0  # full batches: exact local gradients
  c.algorithm.lr = 0.05
  c.train.rounds = 1000
  c.eval.every_rounds = 100
  c.eval.local_examples = 0  # the whole (training) set: each node's model on F
  return c
