"""Model zoo: one architecture per file. Importing this package registers every named model."""
from models import (  # noqa: F401  (registration side effect)
    cnn_transformer,
    conv_stem_vit,
    convmixer,
    deepvit,
    mnist_cnn,
    resnet,
    simple_cnn,
    vgg,
    vit,
)
from models.factory import DATASET_KEYS, MODELS, build_model, create_model, list_models, register_model

__all__ = ["MODELS", "DATASET_KEYS", "build_model", "create_model", "list_models", "register_model"]
