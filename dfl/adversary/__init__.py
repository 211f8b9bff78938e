"""Byzantine and Sybil nodes: who they are (nodes.py), what they send (attacks.py), and how the
crafted messages reach the aggregation inside the jitted round (runtime.py)."""
from dfl.adversary.attacks import ATTACKS, AttackOptions, alie_z, craft_messages
from dfl.adversary.nodes import PLACEMENTS, choose_byzantine, num_byzantine, poison_labels

__all__ = ["ATTACKS", "AttackOptions", "PLACEMENTS", "alie_z", "choose_byzantine",
           "craft_messages", "num_byzantine", "poison_labels"]
