"""Shared fixtures: tiny synthetic data (MVTec layout; the paper's MVTec + BTAD layouts) and a seeded random backbone."""

from pathlib import Path

import pytest
import torch
from PIL import Image

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


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _mvtec_copy(source: Path, target: Path, grayscale: bool) -> None:
    """An MVTec-layout copy of a synthetic category; `grayscale` stores the images in mode L (like grid, screw)."""
    for path in sorted(source.rglob("*.png")):
        image = Image.open(path)
        is_mask = path.parts[-3] == "ground_truth"
        _save(image.convert("L") if grayscale and not is_mask else image, target / path.relative_to(source))


def _btad_copy(source: Path, target: Path, mask_suffix: str, size: tuple[int, int] | None) -> None:
    """A BTAD-layout copy (train/ok, test/ok|ko, ground_truth/ko/<stem><mask_suffix>) with .bmp images,
    optionally resized to a non-square `size` (width, height)."""
    def convert(path: Path, resample: int) -> Image.Image:
        image = Image.open(path)
        return image.resize(size, resample) if size else image

    for path in sorted((source / "train" / "good").glob("*.png")):
        _save(convert(path, Image.BILINEAR).convert("RGB"), target / "train" / "ok" / f"{path.stem}.bmp")
    for folder in sorted((source / "test").iterdir()):
        for path in sorted(folder.glob("*.png")):
            split = "ok" if folder.name == "good" else "ko"
            stem = path.stem if split == "ok" else f"{folder.name}_{path.stem}"
            _save(convert(path, Image.BILINEAR).convert("RGB"), target / "test" / split / f"{stem}.bmp")
            if split == "ko":
                mask = source / "ground_truth" / folder.name / f"{path.stem}_mask.png"
                _save(convert(mask, Image.NEAREST), target / "ground_truth" / "ko" / f"{stem}{mask_suffix}")


@pytest.fixture(scope="session")
def paper_layout(tmp_path_factory) -> Path:
    """A tiny stand-in for the paper's data in their real layouts, category folders side by side:
    MVTec AD `bottle` (RGB) and `grid` (grayscale PNG), BTAD `01` (.bmp images, .png masks) and `02`
    (.bmp images and masks, non-square 112 x 80)."""
    synthetic = generate_mini_benchmark(tmp_path_factory.mktemp("paper_source"), seed=1, n_train=6, n_test_good=2,
                                        n_test_per_defect=1, size=96, categories=["weave", "disc"])
    root = tmp_path_factory.mktemp("paper_layout")
    _mvtec_copy(synthetic / "weave", root / "bottle", grayscale=False)
    _mvtec_copy(synthetic / "weave", root / "grid", grayscale=True)
    _btad_copy(synthetic / "disc", root / "01", ".png", None)
    _btad_copy(synthetic / "disc", root / "02", ".bmp", (112, 80))
    return root
