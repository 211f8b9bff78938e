"""Per-node aggregation rules over the received models (dfl/aggregation/rules.py)."""
from dfl.aggregation.rules import RULES, aggregate, build_rule, neighbourhood

__all__ = ["RULES", "aggregate", "build_rule", "neighbourhood"]
