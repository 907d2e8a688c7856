"""Models: each owns its networks, losses and score. Importing a model module registers it."""

from .base import AnomalyModel, GeneratorStep
from .registry import create, list_models, register
from .skipganomaly_pp import SkipGanomalyPP

__all__ = ["AnomalyModel", "GeneratorStep", "SkipGanomalyPP", "create", "list_models", "register"]
