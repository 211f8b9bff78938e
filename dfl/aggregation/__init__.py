"""Per-node rules over the models a node receives (dfl/aggregation/rules.py: mean, median,
trimmed mean, Krum, ClippedGossip, BALANCE) and the compressors of what it sends, with their
byte counts (dfl/aggregation/compressors.py)."""
from dfl.aggregation.rules import RULES, aggregate, build_rule, neighbourhood

__all__ = ["RULES", "aggregate", "build_rule", "neighbourhood"]
