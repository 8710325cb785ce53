"""altlearn's Ray launcher (experiments/launchers/ray_launcher.py) where hydra looks for launchers:
hydra instantiates only classes defined in the hydra_plugins namespace."""
from experiments.launchers.ray_launcher import RayLauncher as _RayLauncher


class RayLauncher(_RayLauncher):
    pass
