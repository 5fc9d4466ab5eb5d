"""The ground every stage stands on: the config (dataclasses, YAML, validation), user errors,
the command line, the machine (memory, threads, signals), progress bars, atomic files,
folder locks and the run folders that name every file.

Imports nothing else of `regimen`, and nothing of `models`.
"""
