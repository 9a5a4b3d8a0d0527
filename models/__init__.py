"""Model zoo. Importing this package registers every architecture."""
from models import cnn_transformer, convmixer, hybrid, resnet, simple_cnn, vit  # noqa: F401  (registration side effect)
from models.registry import MODELS, create_model, list_models

__all__ = ["MODELS", "create_model", "list_models"]
