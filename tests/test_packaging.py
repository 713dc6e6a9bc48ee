"""Packaging: every package under tvtheory/ is installed, and the shipped weights are package data."""

from pathlib import Path

import tomllib

from tvtheory.models.pretrained import DEFAULT_PRETRAINED

REPO = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "tvtheory").rglob("__init__.py")}
    assert found | {"tvtheory.small_models"} == set(config["packages"])
    assert config["package-dir"] == {"tvtheory.small_models": "small_models"}


def test_shipped_weights_are_found_as_package_data():
    assert DEFAULT_PRETRAINED.is_file()
    assert DEFAULT_PRETRAINED.name == "cnn_cifar5.safetensors"
