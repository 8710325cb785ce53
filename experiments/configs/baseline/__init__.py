"""Single-learner reference runs (backprop).

A root on hydra.searchpath (config.yaml): its experiment/<name>.yaml is `experiment=<name>`."""
