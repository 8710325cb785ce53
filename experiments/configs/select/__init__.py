"""Hyperparameter selections on the validation split (python -m analysis.select reads their folders).

A root on hydra.searchpath (config.yaml): its experiment/<name>.yaml is `experiment=<name>`."""
