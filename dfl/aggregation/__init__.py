"""Per-node rules over the models a node receives or sends; compressors and their byte counts
live in `dfl.aggregation.compressors`."""
