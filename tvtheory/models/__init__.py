"""The networks: the feed-forward network of T4 (``mlp``), a ViT (``vit``) and the residual CNN encoder of the
vision experiments (``cnn``); ``pretrained`` loads an encoder file of either architecture.

Each classifier exposes ``act`` (its elementwise activation; T2 and T3 need it C^2) and
``check_data(features, classes)``, which says in the model's own terms what does not fit.
"""

from .cnn import CNN, CNNConfig
from .mlp import MLP, MLPConfig, make_mlp
from .pretrained import DEFAULT_PRETRAINED, load_pretrained
from .vit import ViT, ViTClassifier, ViTConfig, make_vit

__all__ = ["MLP", "MLPConfig", "make_mlp", "ViT", "ViTClassifier", "ViTConfig", "make_vit", "CNN", "CNNConfig",
           "DEFAULT_PRETRAINED", "load_pretrained"]
