"""The config tree of the `altlearn` app; importing it registers the groups' typed schemas."""
from experiments.schemas import register

register()
