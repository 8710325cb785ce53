"""Kept for code written against the old place of the errors: they live in `core.errors`."""
from core.errors import AltlearnError, ConfigError, DataError, TrainingDiverged, unknown_name  # noqa: F401
