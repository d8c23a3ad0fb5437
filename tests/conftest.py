"""Shared fixtures: one tiny synthetic category (MVTec layout) and a seeded random-weight backbone."""

from pathlib import Path

import pytest
import torch

from protoad_lib.backbones import Backbone, load_backbone
from protoad_lib.data import generate_mini_benchmark


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory) -> Path:
    """The synthetic `weave` category at 96 px: 6 good training images, 2 good + 3 defective test images."""
    root = tmp_path_factory.mktemp("tiny_benchmark")
    return generate_mini_benchmark(root, seed=0, n_train=6, n_test_good=2, n_test_per_defect=1, size=96,
                                   categories=["weave"])


@pytest.fixture(scope="session")
def random_lite0() -> Backbone:
    """EfficientNet-Lite0 with seeded random weights (asked for by name: tests of plumbing, not accuracy)."""
    torch.manual_seed(0)
    return load_backbone("efficientnet_lite0", weights="random")
