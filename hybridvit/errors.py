"""Exceptions with messages meant for people: the CLI prints them as one line and exits with code 2."""


class HybridViTError(ValueError):
    """Base class for every error hybridvit raises on bad user input."""


class UnknownModelError(HybridViTError):
    """A model name that is not registered."""


class CheckpointError(HybridViTError):
    """A checkpoint that is missing, corrupt, or made for another model."""


class InputShapeError(HybridViTError):
    """An input tensor of the wrong rank, channel count or size."""
