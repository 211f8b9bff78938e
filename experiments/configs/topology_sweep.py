"""Does the graph matter? DFedAvg and D-PSGD on a ring and on the complete graph, 3 seeds.

    python -m launch.sweep --config experiments/configs/topology_sweep.py --root runs/topology_sweep \
        --parallel 2
    python -m launch.report runs/topology_sweep --target=0.8

16 nodes on digits (Dirichlet alpha = 0.5), 100 rounds, about 2 minutes on 2 CPU cores. Expect
DFedAvg (5 local steps per round) to need far fewer rounds and bytes than D-PSGD (1 step per
round) for the same accuracy, and the complete graph to be at most slightly ahead of the ring per
round at 16 nodes while sending 7.5 times the bytes. More graphs: add them to the topology axis,
or override it: --sweep topology.name=ring,torus,complete.
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
