"""Models: each owns its networks, losses and score. Importing a model module registers it;
the order here is the order of `list_models()` (the default first)."""

from .base import AnomalyModel, GeneratorStep
from .registry import create, get_model_class, list_models, register
from .skipganomaly_pp import SkipGanomalyPP
from .skipganomaly import SkipGanomaly
from .ganomaly import Ganomaly
from .egbad import Egbad
from .anogan import AnoGan

__all__ = ["AnoGan", "AnomalyModel", "Egbad", "Ganomaly", "GeneratorStep", "SkipGanomaly", "SkipGanomalyPP",
           "create", "get_model_class", "list_models", "register"]
