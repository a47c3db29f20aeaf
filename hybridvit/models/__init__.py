"""Model families; importing this package registers every model with timm."""
from . import mobilevit
from . import boat
from ._registry import PaperEntry, check_model_name, list_models, paper_entry

__all__ = ["PaperEntry", "check_model_name", "list_models", "mobilevit", "paper_entry"]
