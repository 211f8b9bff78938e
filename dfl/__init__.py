"""dfl: decentralized federated learning simulated in JAX, one compiled program for all nodes."""
from dfl.mixing import DenseMixing, SparseMixing, consensus_distance, mix, node_mean
from dfl.variance_correction import variance_corrected_mix

__all__ = ["DenseMixing", "SparseMixing", "mix", "node_mean", "consensus_distance",
           "variance_corrected_mix"]
