"""The search: genomes, the generational and steady-state loops, trial scheduling (threads or
Dask), the trials' subprocess, search state and its Optuna export, and CMA-ES over a PGM.

May import `regimen.evaluate` and every layer below it.
"""
