"""Data: the built-in generators and archive readers, time and sequence splits, phase 0
(`preprocess`), the processed store and its windows, augmentations and the feature arrays
that phase 1 writes for phase 2.

May import `regimen.scores` and `regimen.core`.
"""
