"""tvtheory.vision.clip with a stand-in ``open_clip`` module (the real one is an optional extra): the adapter,
its input statistics, its errors, and a finetune run of the vision CLI on it."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from tvtheory.experiments import vision
from tvtheory.experiments.config import VisionConfig
from tvtheory.experiments.encoders import load_encoder
from tvtheory.experiments.probe import FrozenHeadClassifier
from tvtheory.vision.clip import (
    CLIP_MEAN,
    CLIP_STD,
    MISSING_OPEN_CLIP,
    load_open_clip,
    parse_open_clip_spec,
)
from tvtheory.vision.datasets import normalize


class FakeVisual(nn.Module):
    """A tiny image tower shaped like open_clip's: patch conv, self-attention, pooled projection."""

    image_size = (8, 8)
    output_dim = 6

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.proj = nn.Linear(8, self.output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x).flatten(2).transpose(1, 2)                   # (N, 4 patches, 8)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.proj(h.mean(1))


@pytest.fixture
def open_clip(monkeypatch):
    """A stand-in ``open_clip`` whose ``create_model`` records its calls and returns a seeded FakeVisual."""
    module = types.ModuleType("open_clip")
    module.calls = []

    def create_model(model_name, pretrained=None):
        module.calls.append((model_name, pretrained))
        torch.manual_seed(0)
        return types.SimpleNamespace(visual=FakeVisual())

    module.create_model = create_model
    monkeypatch.setitem(sys.modules, "open_clip", module)
    return module


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "clip.bin"
    path.write_bytes(b"weights")
    return path


def test_adapter(open_clip, checkpoint):
    enc, cfg = load_open_clip("ViT-B-32", checkpoint)
    assert open_clip.calls == [("ViT-B-32", str(checkpoint.resolve()))]
    assert (cfg.image_size, cfg.dim, cfg.mean, cfg.std) == (8, 6, CLIP_MEAN, CLIP_STD)
    assert json.loads(json.dumps(cfg.to_dict()))["model_name"] == "ViT-B-32"
    assert enc.config is cfg and not enc.training
    x = torch.randn(5, 3, 8, 8)
    z = enc.encode(x)
    assert z.shape == (5, 6)
    torch.testing.assert_close(z, enc.visual(x))                       # the fused kernel: equal up to rounding


def test_adapter_has_second_derivatives(open_clip, checkpoint):
    """HVPs (forward over reverse, as tvtheory.curvature.hvp) through the attention of the tower: the adapter runs
    it with the math kernel, the fused ones have no forward-mode AD."""
    enc, _ = load_open_clip("ViT-B-32", checkpoint)
    model = FrozenHeadClassifier(enc, torch.randn(3, 6), torch.zeros(3))
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p):
        return nn.functional.cross_entropy(torch.func.functional_call(model, p, (x,)), y)

    v = {k: torch.randn_like(t) for k, t in params.items()}
    _, hv = torch.func.jvp(torch.func.grad(loss), (params,), (v,))
    assert all(torch.isfinite(t).all() for t in hv.values()) and hv["encoder.visual.attn.in_proj_weight"].norm() > 0


def test_prepare_normalises_with_the_encoders_statistics(open_clip, checkpoint):
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    clip = load_encoder(VisionConfig(pretrained=f"open_clip:ViT-B-32:{checkpoint}")).prepare
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(clip(x), (x / 255.0 - mean) / std)
    small_vit = load_encoder(VisionConfig(synthetic=True)).prepare
    assert torch.equal(small_vit(x), normalize(x))                      # the small ViT: CIFAR-10's, as before


def test_missing_checkpoint_is_refused_before_importing_open_clip(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "open_clip", None)                 # importing it would fail
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_open_clip("ViT-B-32", tmp_path / "absent.pt")


def test_without_open_clip(monkeypatch, checkpoint, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ModuleNotFoundError, match="open_clip is not installed"):
        load_open_clip("ViT-B-32", checkpoint)
    code = vision.main(["finetune", "--pretrained", f"open_clip:ViT-B-32:{checkpoint}", "--results", str(tmp_path)])
    assert code == 2 and MISSING_OPEN_CLIP in capsys.readouterr().err


def test_spec(tmp_path, capsys):
    assert parse_open_clip_spec("open_clip:ViT-B-16:/ckpt/a:b.pt") == ("ViT-B-16", Path("/ckpt/a:b.pt"))
    for bad in ("open_clip:ViT-B-16", "open_clip::/ckpt.pt", "ViT-B-16:/ckpt.pt"):
        with pytest.raises(ValueError, match="expected open_clip:<model_name>:<checkpoint_path>"):
            parse_open_clip_spec(bad)
    assert vision.main(["finetune", "--pretrained", "open_clip:ViT-B-32"]) == 2
    err = capsys.readouterr().err
    assert "(--pretrained)" in err and "expected open_clip:<model_name>:<checkpoint_path>" in err
    assert len(err.strip().splitlines()) == 1


def test_finetune_on_a_clip_encoder_and_a_folder_task(open_clip, checkpoint, tmp_path):
    """The CLI end to end on the stand-in CLIP: folder images read at its image size, HVPs through its attention."""
    from cases import write_image_folder

    root = write_image_folder(tmp_path / "shapes")
    spec = f"open_clip:ViT-B-32:{checkpoint}"
    assert vision.main(["finetune", "--pretrained", spec, "--task-folder", f"shapes={root}", "--optimizers", "gd",
                        "--gd-steps", "2", "--seeds", "0", "--max-train", "16", "--lr-gd", "1e-3", "--no-progress",
                        "--results", str(tmp_path / "results"), "--artifacts", str(tmp_path / "artifacts")]) == 0
    r = json.loads((tmp_path / "results" / "seed0" / "shapes" / "gd.json").read_text())
    assert r["config"]["pretrained"] == spec and r["data"]["num_train"] == 16 and r["t1_check"]["holds"]
    assert r["analysis"]["expansion"]["second_order_computed"]
    assert r["num_params_encoder"] == sum(p.numel() for p in FakeVisual().parameters())
