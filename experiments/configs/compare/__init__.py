"""Experiments that set learners side by side on one dataset, network and budget.

A root on hydra.searchpath (config.yaml): its experiment/<name>.yaml is `experiment=<name>`."""
