"""Models: each owns its networks, losses and score. Importing a model module registers it;
the order here is the order of `list_models()` (the default first)."""

from .base import AnomalyModel, ClosedFormModel, GanModel, LossStep, Phase
from .registry import create, get_model_class, list_models, register
from .rotation import RotationNet
from .skipganomaly_pp import SkipGanomalyPP, SkipGanomalyPPRotation
from .skipganomaly import SkipGanomaly
from .ganomaly import Ganomaly
from .egbad import Egbad
from .anogan import AnoGan
from .pca import Pca
from .knn import Knn

# The raw-pixel yardsticks shown beside every learned model (demo, benchmark tables).
BASELINES = ("pca", "knn")

__all__ = ["BASELINES", "AnoGan", "AnomalyModel", "ClosedFormModel", "Egbad", "GanModel", "Ganomaly", "Knn", "LossStep", "Pca", "Phase",
           "RotationNet", "SkipGanomaly", "SkipGanomalyPP", "SkipGanomalyPPRotation", "create", "get_model_class", "list_models", "register"]
