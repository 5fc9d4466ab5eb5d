"""Plain PyTorch models and inference: no files, no configs, no runs."""
