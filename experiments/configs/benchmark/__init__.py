"""The flagship benchmarks: every learner tuned with the same budget (altlearn tune).

A root on hydra.searchpath (config.yaml): its experiment/<name>.yaml is `experiment=<name>`."""
