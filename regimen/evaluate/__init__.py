"""Evaluation: reports of a checkpoint on a split, calibration, export bundles and `predict`,
and the pictures of data and predictions.

May import `regimen.train` and every layer below it.
"""
