"""Running rules: datasets, the one fit loop, recording, and the hydra app."""
