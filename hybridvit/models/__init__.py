"""Model families; importing this package registers every model with timm."""
from . import boat, ceit, mobilevit, mocovit, xformer
from ._registry import PaperEntry, check_model_name, list_models, paper_entry

__all__ = [
    "PaperEntry",
    "boat",
    "ceit",
    "check_model_name",
    "list_models",
    "mobilevit",
    "mocovit",
    "paper_entry",
    "xformer",
]
