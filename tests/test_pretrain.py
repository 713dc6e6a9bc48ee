"""small_models/pretrain.py on a tiny configuration: both architectures, and a resumed run is the same run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tvtheory.models.cnn import CNN
from tvtheory.models.pretrained import load_pretrained
from tvtheory.models.vit import ViT
from tvtheory.vision.datasets import default_data_root

REPO = Path(__file__).resolve().parents[1]
DATA = default_data_root()[0]
pytestmark = pytest.mark.skipif(not (DATA / "cifar10.zip").is_file(),
                                reason=f"real data not found: {DATA / 'cifar10.zip'} (beside the repo's shared/)")


def _script():
    spec = importlib.util.spec_from_file_location("pretrain", REPO / "small_models" / "pretrain.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = {"cnn": ["--widths", "8,16", "--groups", "4"],
        "vit": ["--dim", "16", "--depth", "1", "--heads", "2", "--mlp-dim", "32"]}


def _args(arch: str, tmp: Path, out: str, epochs: int = 2) -> list[str]:
    return ["--arch", arch, "--epochs", str(epochs), "--max-train", "192", "--max-test", "64", "--batch-size", "64",
            "--out-dir", str(tmp / out), "--run-dir", str(tmp / "runs"), "--eval-every", "0", *TINY[arch]]


@pytest.mark.parametrize("arch", ["cnn", "vit"])
def test_pretrain_writes_a_loadable_encoder_and_its_card(tmp_path, arch):
    summary = _script().main(_args(arch, tmp_path, "out"))
    weights = tmp_path / "out" / f"{arch}_cifar5.safetensors"
    encoder, config = load_pretrained(weights)
    assert isinstance(encoder, CNN if arch == "cnn" else ViT) and config.num_classes == 0
    card = json.loads((tmp_path / "out" / f"{arch}_cifar5.json").read_text())
    assert card == json.loads(json.dumps(summary)) and card["arch"] == arch and len(card["history"]) == 2
    recipe = _script().RECIPES[arch]
    assert card["hyperparameters"]["lr"] == recipe["lr"] and card["epochs"] == 2        # flags override the recipe


def test_an_interrupted_and_resumed_run_gives_the_same_file(tmp_path):
    script = _script()
    script.main(_args("cnn", tmp_path, "straight"))
    resumed_runs = tmp_path / "resumed_runs"
    first = _args("cnn", tmp_path, "partial", epochs=2)
    first[first.index("--run-dir") + 1] = str(resumed_runs)
    assert script.main([*first, "--stop-after", "1"]) == {}           # interrupted after epoch 1 of 2
    script.main([*first, "--resume"])
    a = (tmp_path / "straight" / "cnn_cifar5.safetensors").read_bytes()
    b = (tmp_path / "partial" / "cnn_cifar5.safetensors").read_bytes()
    assert a == b


def test_resume_refuses_other_settings(tmp_path):
    script = _script()
    args = _args("cnn", tmp_path, "out", epochs=1)
    script.main(args)
    other = [*args, "--resume", "--lr", "0.01"]
    with pytest.raises(SystemExit, match="other settings"):
        script.main(other)
