"""Exceptions with messages meant for people: the CLI prints them as one line and exits with code 2."""
from collections.abc import Iterable


class HybridViTError(ValueError):
    """Base class for every error hybridvit raises on bad user input."""


class UnknownModelError(HybridViTError):
    """A model name that is not registered."""


class CheckpointError(HybridViTError):
    """A checkpoint that is missing, corrupt, or made for another model."""


class InputShapeError(HybridViTError):
    """An input tensor of the wrong rank, channel count or size."""


class DataError(HybridViTError):
    """A data directory that is missing, empty, or holds no readable image."""


class RecipeError(HybridViTError):
    """A training recipe name that is not defined."""


class TrainingDivergedError(HybridViTError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class UnknownHeadError(HybridViTError):
    """A dense-prediction head name that is not defined."""

    @classmethod
    def check(cls, task: str, head: str, heads: Iterable[str]) -> str:
        """`head` when it is one of `heads`; otherwise this error, naming the `task` and listing `heads`."""
        if head not in heads:
            raise cls(f"unknown {task} head '{head}'; choose one of {', '.join(heads)}")
        return head


class UnsupportedBackboneError(HybridViTError):
    """A backbone without the feature strides a dense-prediction head needs."""


class OutputError(HybridViTError):
    """An output path that cannot be written: read-only, a full disk, a file where a folder is needed."""


class UnsupportedOptionError(HybridViTError):
    """An option value that a model does not support (e.g. an output format)."""
