"""Everything the phase scripts share that is not a model."""
