"""Errors users meet: each names the problem and the fix."""


class AltlearnError(Exception):
    """Base of every error altlearn raises on purpose (the CLI prints these without a traceback)."""


class ConfigError(AltlearnError, ValueError):
    """A name, key or value in the configuration is not allowed."""


class DataError(AltlearnError):
    """A data file is missing, corrupt or of the wrong shape."""


class TrainingDiverged(AltlearnError, FloatingPointError):
    """A metric or prediction became NaN/inf during training."""

    def __init__(self, message, *, epoch=None, step=None, block=None, value=None):
        super().__init__(message)
        self.epoch, self.step, self.block, self.value = epoch, step, block, value

    def __reduce__(self):  # keyword-only fields survive pickling (a run in a child process)
        return _rebuild_diverged, (self.args[0], self.epoch, self.step, self.block, self.value)


def _rebuild_diverged(message, epoch, step, block, value):
    return TrainingDiverged(message, epoch=epoch, step=step, block=block, value=value)


def unknown_name(kind: str, name, known) -> ConfigError:
    known = sorted(known)
    return ConfigError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(known)}")
