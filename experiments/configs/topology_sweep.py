"""Does the graph matter? DFedAvg and D-PSGD on a ring and on the complete graph, 3 seeds.

    python -m launch.sweep --config experiments/configs/topology_sweep.py --root runs/topology_sweep \
        --batch_seeds --parallel 2
    python -m launch.report runs/topology_sweep --target=0.8

16 nodes on digits (Dirichlet alpha = 0.5), 100 rounds. Expect the complete graph to reach a
given accuracy in fewer rounds than the ring for the same algorithm but to send more bytes
(every node talks to all others), and DFedAvg (5 local steps per round) to need far fewer rounds
and bytes than D-PSGD (1 step per round). More graphs: add them to the topology axis, or
override it: --sweep topology.name=ring,torus,complete.
"""
from experiments.configs import default


def get_config():
  c = default.get_config()
  c.train.rounds = 100
  return c


def get_sweep():
  return [{"topology.name": ["ring", "complete"]},
          {"algorithm.name": ["dfedavg", "dpsgd"]},
          {"seed": [0, 1, 2]}]
