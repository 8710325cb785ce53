"""Experiments that rerun a paper's setting (full budget, and the reduced CPU runs whose results are committed).

A root on hydra.searchpath (config.yaml): its experiment/<name>.yaml is `experiment=<name>`."""
