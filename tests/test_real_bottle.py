"""The one real-data integration test: the MVTec AD bottle mini subset beside the repository."""

from pathlib import Path

import pytest
import torch

from protoad_lib.backbones import load_backbone
from protoad_lib.data import AnomalyDataset, count_samples
from protoad_lib.categories import load_category
from protoad_lib.evaluation import evaluate_on_category
from protoad_lib.methods.protoad import ProtoAD

REAL_BOTTLE = Path(__file__).resolve().parents[1].parent / "shared/data/mvtec_bottle_mini"

pytestmark = pytest.mark.skipif(not REAL_BOTTLE.is_dir(), reason=f"real MVTec mini subset not found at {REAL_BOTTLE}")


def test_real_mvtec_bottle_mini_loads_with_the_right_labels_and_masks():
    train = AnomalyDataset(REAL_BOTTLE, "bottle", "train")
    test = AnomalyDataset(REAL_BOTTLE, "bottle", "test")
    assert len(train) == 40 and set(train.labels) == {0}
    assert len(test) == 13 and sum(test.labels) == 9 and test.labels.count(0) == 4
    assert count_samples(test)["per_defect"] == {"broken_large": 3, "broken_small": 3, "contamination": 3, "good": 4}
    assert all((record.mask_path is not None) == (record.label == 1) for record in test.samples)
    for index in range(len(test)):
        sample = test[index]
        assert sample["image"].shape == (3, 224, 224)
        assert set(torch.unique(sample["mask"]).tolist()) <= {0.0, 1.0}
        assert (sample["mask"].sum() > 0) == (sample["label"] == 1), sample["path"]


def test_protoad_on_real_bottle_meets_the_accuracy_targets():
    backbone = load_backbone("efficientnet_lite0")
    data = load_category(backbone, REAL_BOTTLE, "bottle", progress=False)
    result = evaluate_on_category(ProtoAD(backbone), data)
    assert result.metrics["image_auroc"] == 1.0
    assert result.metrics["pixel_auroc"] >= 0.97
    assert result.metrics["aupro"] >= 0.9
