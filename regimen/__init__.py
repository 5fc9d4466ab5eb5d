"""Everything the phase scripts share that is not a model, in one folder per stage.

The folders are layers, each importing only those below it (checked by the
import-linter contract in `pyproject.toml`, run by `tests/test_layers.py`):

    search     the evolutionary search, CMA-ES and the trials they run
    evaluate   evaluation, calibration, bundles and their pictures
    train      the stack (ConvLSTM + PGM head), training, inference, phases 1-3
    data       readers, phase 0, the processed store and its windows
    scores     sums that every stage scores with (metrics, verification)
    core       config, errors, files, folders, run folders, the machine

`models` (the ConvLSTM and the PGMs) sits below them all and imports nothing of `regimen`.
"""
