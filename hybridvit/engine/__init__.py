"""Training and evaluation: train loop, evaluation, checkpoints, DDP glue and the papers' recipes."""
from .recipes import RECIPES, Recipe, get_recipe
from .train import TrainConfig, Trainer, train

__all__ = ["RECIPES", "Recipe", "TrainConfig", "Trainer", "get_recipe", "train"]
