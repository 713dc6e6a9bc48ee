"""The networks the theorem engine checks: the feed-forward network of T4 (``mlp``) and a ViT (``vit``).

Each classifier exposes ``act`` (its elementwise activation; T2 and T3 need it C^2) and
``check_data(features, classes)``, which says in the model's own terms what does not fit.
"""

from .mlp import MLP, MLPConfig, make_mlp
from .vit import ViT, ViTClassifier, ViTConfig, load_pretrained, make_vit, save_encoder

__all__ = ["MLP", "MLPConfig", "make_mlp", "ViT", "ViTClassifier", "ViTConfig", "make_vit", "load_pretrained",
           "save_encoder"]
