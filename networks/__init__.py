"""Shared network definitions: `NetworkSpec`, `build(spec, seed)` and named presets."""
from networks.build import Network, build, from_numpy, to_numpy
from networks.presets import PRESETS, get_preset, register_preset
from networks.spec import NetworkSpec

__all__ = ["Network", "NetworkSpec", "build", "to_numpy", "from_numpy", "PRESETS", "get_preset",
           "register_preset"]
