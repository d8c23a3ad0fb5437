"""Embeddings read a few images at a time: stored (safetensors), in memory, and their views, read alike."""

import gc

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from protoad_lib.embeddings import (
    DamagedEmbeddings, SpilledEmbeddings, StoredEmbeddings, TensorEmbeddings, write_embeddings,
)


class PieceByPiece(TensorEmbeddings):
    """In-memory embeddings that refuse to be read whole: more than `limit` images at once, or `to_tensor`."""

    def __init__(self, tensor: torch.Tensor, limit: int = 8) -> None:
        super().__init__(tensor)
        self.limit, self.largest = limit, 0

    def _read(self, images, rows, cols):
        if len(images) > self.limit:
            raise AssertionError(f"{len(images)} images read at once")
        self.largest = max(self.largest, len(images))
        return super()._read(images, rows, cols)

    def to_tensor(self):
        raise AssertionError("read whole")


@pytest.fixture
def features():
    return torch.randn(5, 6, 4, 3, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def stored(features, tmp_path):
    return StoredEmbeddings(write_embeddings(tmp_path / "e.safetensors", features.split(2), 5, {"note": "x"}))


def test_a_stored_split_reads_back_exactly_by_chunk_window_and_patch(features, stored):
    assert stored.shape == (5, 6, 4, 3) and stored.metadata == {"note": "x"}
    assert torch.equal(torch.cat(list(stored.chunks(2))), features)
    assert torch.equal(stored.read([3, 1], rows=slice(1, 3), cols=slice(1, 3)), features[[3, 1]][:, :, 1:3, 1:3])
    assert torch.equal(stored.read([4], rows=slice(2, 4)), features[[4]][:, :, 2:4])
    flat = features.permute(0, 2, 3, 1).reshape(-1, 6)
    picks = np.array([7, 0, 59, 33, 12, 33])
    assert torch.equal(stored.gather(picks, batch_size=2), flat[picks])
    assert torch.equal(TensorEmbeddings(features).gather(picks), flat[picks])


def test_the_file_is_plain_safetensors_channels_last(features, stored):
    assert torch.equal(load_file(stored.path)["embeddings"], features.permute(0, 2, 3, 1))


def test_views_select_images_and_map_chunks_without_copying_the_split(features, stored):
    assert torch.equal(stored.subset([4, 2]).to_tensor(), features[[4, 2]])
    local = stored.mapped(lambda x: x[:, [1, 4]], local=True)
    assert local.shape == (5, 2, 4, 3)
    assert torch.equal(local.read([0], rows=slice(0, 1)), features[[0]][:, [1, 4], 0:1])
    assert torch.equal(local.gather([5, 20]), features.permute(0, 2, 3, 1).reshape(-1, 6)[[5, 20]][:, [1, 4]])
    pooled = stored.mapped(lambda x: x.mean(dim=(2, 3), keepdim=True))
    assert pooled.shape == (5, 6, 1, 1)
    with pytest.raises(ValueError, match="not local"):
        pooled.read([0], rows=slice(0, 1))


def test_reads_stay_as_small_as_asked(features):
    source = PieceByPiece(features, limit=2)
    assert torch.equal(torch.cat(list(source.chunks(2))), features)
    source.gather(np.arange(60), batch_size=2)
    assert source.largest == 2


@pytest.mark.parametrize("damage", ["cut", "padded", "zeroed"])
def test_a_damaged_file_is_refused(stored, damage):
    data = stored.path.read_bytes()
    stored.path.write_bytes({"cut": data[:-4], "padded": data + b"\0" * 4, "zeroed": bytes(len(data))}[damage])
    with pytest.raises(DamagedEmbeddings):
        StoredEmbeddings(stored.path)


def test_writing_fewer_images_than_announced_fails(features, tmp_path):
    with pytest.raises(ValueError, match="4 images written, 5 announced"):
        write_embeddings(tmp_path / "e.safetensors", features[:4].split(2), 5)


def test_a_spilled_split_is_deleted_with_its_object(features):
    spilled = SpilledEmbeddings.of(features.split(3), 5)
    path = spilled.path
    assert path.exists() and torch.equal(spilled.to_tensor(), features)
    del spilled
    gc.collect()
    assert not path.exists()
