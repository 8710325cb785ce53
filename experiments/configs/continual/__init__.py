"""Continual-learning experiments: task streams (permuted and split MNIST).

A root on hydra.searchpath (config.yaml): its experiment/<name>.yaml is `experiment=<name>`."""
