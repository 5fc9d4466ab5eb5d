"""Training: the stack (ConvLSTM and PGM head), losses, the PGM fits, the training loop,
inference over a split, data-parallel worlds (torchrun) and phases 1-3 (`phases`).

May import `regimen.data`, `regimen.scores`, `regimen.core` and `models`.
"""
