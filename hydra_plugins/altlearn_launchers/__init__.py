"""altlearn's own hydra launchers (experiments/launchers/), registered where hydra looks for them."""
