"""Pretrained encoders on disk: the shipped default and ``load_pretrained`` for either architecture.

An encoder file is a safetensors file written by ``save_encoder``: float32 weights without a head and one
metadata key holding the config as JSON, the only metadata key (safetensors writes several keys in a random
order; one key keeps the file byte-identical for identical weights). The key names the architecture
(``cnn_config`` or ``vit_config``), so ``load_pretrained`` needs no other hint. Provenance (data, recipe,
accuracy, wall time) is in the JSON file of the same name beside the weights.
"""

from __future__ import annotations

import json
from dataclasses import replace
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from ..io import atomic_path
from . import cnn, vit

__all__ = ["DEFAULT_PRETRAINED", "save_encoder", "load_pretrained"]

#: The shipped pretrained encoder (``small_models/pretrain.py``), installed as package data of
#: ``tvtheory.small_models`` (the repository's ``small_models/`` folder), so a plain ``pip install .`` finds it.
DEFAULT_PRETRAINED = Path(str(resources.files("tvtheory.small_models").joinpath("cnn_cifar5.safetensors")))

#: metadata key -> (model class, config class)
_Arch = tuple[type[cnn.CNN] | type[vit.ViT], type[cnn.CNNConfig] | type[vit.ViTConfig]]
_ARCHITECTURES: dict[str, _Arch] = {cnn.CONFIG_METADATA_KEY: (cnn.CNN, cnn.CNNConfig),
                                    vit.CONFIG_METADATA_KEY: (vit.ViT, vit.ViTConfig)}


def _metadata_key(model: nn.Module) -> str:
    for key, (model_cls, _) in _ARCHITECTURES.items():
        if type(model) is model_cls:
            return key
    raise TypeError(f"save_encoder takes a CNN or a ViT, got {type(model).__name__}")


def save_encoder(model: cnn.CNN | vit.ViT, path: str | Path) -> Path:
    """Write the encoder weights of ``model`` (float32 copies, the head left out) and its config (with
    ``num_classes = 0``) to the safetensors file ``path``, atomically (module docstring).
    """
    from safetensors.torch import save_file

    path = Path(path)
    key = _metadata_key(model)
    state = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in model.state_dict().items()
             if not k.startswith("head.")}
    config = replace(model.config, num_classes=0).to_dict()
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={key: json.dumps(config, sort_keys=True)})
    return path


def load_pretrained(path: str | Path | None = None) -> tuple[nn.Module, cnn.CNNConfig | vit.ViTConfig]:
    """Load an encoder file (module docstring; default: the shipped one) as ``(model, config)``: a float32
    model without head (``config.num_classes == 0``) in eval mode. FileNotFoundError when the file is missing,
    ValueError when it is not an encoder file.
    """
    from safetensors import safe_open

    path = Path(path) if path is not None else DEFAULT_PRETRAINED
    if not path.is_file():
        hint = "run `python small_models/pretrain.py` to create it" if path == DEFAULT_PRETRAINED else "check the path"
        raise FileNotFoundError(f"pretrained encoder weights not found at {path}: {hint}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        keys = [k for k in _ARCHITECTURES if k in meta]
        if len(keys) != 1:
            raise ValueError(f"{path} has metadata keys {sorted(meta)}, not one of {sorted(_ARCHITECTURES)}: "
                             "not a file written by save_encoder")
        state = {k: f.get_tensor(k) for k in f.keys()}
    model_cls, config_cls = _ARCHITECTURES[keys[0]]
    config = replace(config_cls.from_dict(json.loads(meta[keys[0]])), num_classes=0)
    model = model_cls(config)  # type: ignore[arg-type]  # the pair of one key belongs together
    model.load_state_dict(state, strict=True)
    return model.eval(), config
