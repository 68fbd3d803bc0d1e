"""Fixtures shared by the plugin tests."""

from __future__ import annotations

import pytest
import torch

from core.cli.main import main
from core.registry import get_registry


@pytest.fixture(scope="session")
def pairs_data(tmp_path_factory):
    """A demo dataset folder (``dataset.toml``): 48 training and 24 validation image-caption pairs."""
    root = tmp_path_factory.mktemp("pairs")
    assert main(["demo-data", str(root / "data"), "--n", "48", "--val", "24", "--class-images", "0",
                 "--detection-frames", "0", "--seed", "2"]) == 0
    return root / "data"


@pytest.fixture(scope="session")
def tiny_example_model():
    """The example plugin's tiny model with seeded random weights, in eval mode."""
    torch.manual_seed(0)
    return get_registry().backbone_for("example-tiny").tiny("example-tiny").eval()
