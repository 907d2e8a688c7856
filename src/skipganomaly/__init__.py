"""skipganomaly: Skip-GANomaly++ and its family for image anomaly detection, with honest evaluation."""

from .detector import Detector
from .errors import CheckpointError, ConfigError, DataError, SkipGanomalyError
from .models import create, list_models

__version__ = "0.1.0"

__all__ = ["CheckpointError", "ConfigError", "DataError", "Detector", "SkipGanomalyError", "create", "list_models"]
