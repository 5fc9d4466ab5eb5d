"""Sums that training, evaluation and the search score with: label and regression metrics
summed over batches (`metrics`), and the forecast verification scores (`verification`).

May import `regimen.core` only.
"""
