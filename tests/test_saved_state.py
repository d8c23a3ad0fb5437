"""Saved state is trusted only when it still describes the data: cache keys, damaged files, checkpoint digests."""

import json
import multiprocessing
import os
import pathlib
import shutil
import struct
import warnings
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from protoad_lib import cli
from protoad_lib.backbones import load_backbone
from protoad_lib.caches import CacheFolder, cache_folders
from protoad_lib.checkpoint import CheckpointError, load_detector, read_checkpoint, save_detector
from protoad_lib.data import AnomalyDataset
from protoad_lib.atomic import CacheWarning
from protoad_lib.categories import load_category
from protoad_lib.experiments.ablations import fit_baselines, sigma_ablation, timed
from protoad_lib.experiments.comparison import MethodResult, score_method
from protoad_lib.embeddings import write_embeddings
from protoad_lib.features import CacheKey, FeatureCache, embed_split
from protoad_lib.methods import make_detector
from protoad_lib.methods.protoad import ProtoADConfig
from protoad_lib.report.writers import save_table
from protoad_lib.resume import ResultStore


def train_split(root, resize=96, crop=96):
    return AnomalyDataset(root, "weave", "train", resize=resize, crop=crop)


@pytest.fixture
def weave_copy(tiny_benchmark, tmp_path):
    """A private copy of the tiny benchmark (tests below replace its files)."""
    return shutil.copytree(tiny_benchmark, tmp_path / "data")


def embed(backbone, dataset, cache):
    key = CacheKey.of("tiny", "weave", "train", backbone, dataset)
    return embed_split(backbone, dataset, key, cache, batch_size=4, progress=False), key


def test_replacing_an_image_at_the_same_count_and_size_is_a_miss(weave_copy, random_lite0, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    before, key = embed(random_lite0, train_split(weave_copy), cache)
    train = sorted((weave_copy / "weave" / "train" / "good").glob("*.png"))
    shutil.copyfile(train[1], train[0])  # another image, same pixel size, same number of images
    after, new_key = embed(random_lite0, train_split(weave_copy), cache)
    assert new_key != key and new_key.n_images == key.n_images
    assert not torch.equal(after.read([0]), before.read([0]))
    torch.testing.assert_close(after.read([0])[0], after.read([1])[0])
    assert len(list(cache.directory.glob("*.safetensors"))) == 2


def test_content_digest_catches_an_edit_that_keeps_size_and_time(weave_copy):
    path = sorted((weave_copy / "weave" / "train" / "good").glob("*.png"))[0]
    stat = path.stat()
    by_stamp, by_content = train_split(weave_copy).files_digest(), train_split(weave_copy).files_digest(content=True)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert train_split(weave_copy).files_digest() == by_stamp
    assert train_split(weave_copy).files_digest(content=True) != by_content


def test_resize_crop_weights_and_code_version_are_part_of_the_key(tiny_benchmark, random_lite0):
    base = CacheKey.of("tiny", "weave", "train", random_lite0, train_split(tiny_benchmark))
    assert CacheKey.of("tiny", "weave", "train", random_lite0, train_split(tiny_benchmark, resize=110)) != base
    assert CacheKey.of("tiny", "weave", "train", random_lite0, train_split(tiny_benchmark, crop=80)) != base
    torch.manual_seed(1)
    again = load_backbone("efficientnet_lite0", weights="random")  # random weights are the same in every process
    assert CacheKey.of("tiny", "weave", "train", again, train_split(tiny_benchmark)).digest() == base.digest()
    changed = load_backbone("efficientnet_lite0", weights="random")
    with torch.no_grad():
        changed.body.stem[0].weight.add_(1e-3)
    assert CacheKey.of("tiny", "weave", "train", changed, train_split(tiny_benchmark)).digest() != base.digest()
    assert base.code_version >= 2


@pytest.mark.parametrize("damage", ["truncate", "zero"])
def test_damaged_cache_entry_is_reported_and_recomputed(weave_copy, random_lite0, tmp_path, damage):
    cache = FeatureCache(tmp_path / "cache")
    fresh, key = embed(random_lite0, train_split(weave_copy), cache)
    fresh_tensor = fresh.to_tensor()
    path = cache.path(key)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2 : len(data) // 2 + 4096] = bytes(4096)
        data[:64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match=str(path.name)):
        again, _ = embed(random_lite0, train_split(weave_copy), cache)
    assert torch.equal(again.to_tensor(), fresh_tensor)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert torch.equal(cache.load(key).to_tensor(), fresh_tensor)  # the recomputed entry is whole again


def test_cache_entry_of_other_settings_under_the_same_name_is_recomputed(tmp_path):
    cache = FeatureCache(tmp_path)
    key = CacheKey("toy", "cat", "train", "resnet18", "random", ("layer1",), 64, 2)
    path = cache.save(key, torch.ones(2, 3, 4, 4))
    other = json.dumps(key.as_dict() | {"n_images": 3}, sort_keys=True)
    write_embeddings(path, [torch.zeros(3, 3, 4, 4)], 3, {"key": other})
    with pytest.warns(CacheWarning, match="other settings"):
        assert cache.load(key) is None
    assert not path.exists()


def test_damaged_stored_result_is_reported_and_recomputed(tmp_path):
    store = ResultStore(tmp_path, {"backbone": "x"})
    path = store.save({"auroc": 0.9}, "bottle", "padim")
    assert store.load("bottle", "padim") == {"auroc": 0.9}
    assert ResultStore(tmp_path, {"backbone": "y"}).load("bottle", "padim") is None  # other settings: a miss
    path.write_bytes(path.read_bytes()[:40])
    with pytest.warns(CacheWarning, match="cannot be read"):
        assert store.load("bottle", "padim") is None
    assert not path.exists()


def test_computed_runs_a_unit_once_and_again_only_when_asked_to_redo(tmp_path):
    calls = []

    def measure():
        calls.append(1)
        return {"p50_ms": float(len(calls))}

    assert ResultStore(tmp_path, {"device": "cpu"}).computed(measure, "bottle", "benchmark") == {"p50_ms": 1.0}
    assert ResultStore(tmp_path, {"device": "cpu"}).computed(measure, "bottle", "benchmark") == {"p50_ms": 1.0}
    assert ResultStore(tmp_path, {"device": "cuda"}).computed(measure, "bottle", "benchmark") == {"p50_ms": 2.0}
    assert ResultStore(tmp_path, {"device": "cpu"}, redo=True).computed(measure, "bottle", "benchmark") == {"p50_ms": 3.0}
    assert len(calls) == 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_benchmark, random_lite0):
    detector = make_detector("padim", random_lite0).fit(train_split(tiny_benchmark), batch_size=4, progress=False)
    return save_detector(detector, tmp_path_factory.mktemp("ckpt") / "padim.safetensors", image_size=96, resize=96)


def zero_bytes_in_tensor_data(source, target, count=40):
    data = bytearray(source.read_bytes())
    header = struct.unpack("<Q", data[:8])[0]
    start = 8 + header + (len(data) - 8 - header) // 2
    assert any(data[start : start + count])
    data[start : start + count] = bytes(count)
    target.write_bytes(bytes(data))
    return target


def test_zeroed_bytes_in_a_checkpoint_are_refused_clearly(checkpoint, tmp_path, tiny_benchmark):
    damaged = zero_bytes_in_tensor_data(checkpoint, tmp_path / "damaged.safetensors")
    with pytest.raises(CheckpointError, match="damaged.safetensors is damaged"):
        load_detector(damaged)
    image = sorted((tiny_benchmark / "weave" / "test" / "good").glob("*.png"))[0]
    code = cli.main(["predict", "--model", str(damaged), str(image), "--out", str(tmp_path / "out")])
    assert code == 2


def test_untouched_checkpoint_loads_bit_identically(checkpoint, tmp_path):
    copy = shutil.copyfile(checkpoint, tmp_path / "copy.safetensors")
    (_, original), (_, loaded) = read_checkpoint(checkpoint), read_checkpoint(copy)
    assert original.keys() == loaded.keys() and all(torch.equal(original[k], loaded[k]) for k in original)
    detector, metadata = load_detector(copy)
    assert metadata["format_version"] == 3
    assert all(torch.equal(tensor, original[name]) for name, tensor in detector.state_tensors().items())


def test_a_newer_format_is_named_as_such(checkpoint, tmp_path):
    metadata, tensors = read_checkpoint(checkpoint)
    newer = tmp_path / "newer.safetensors"
    save_file(tensors, str(newer), metadata={"protoad": json.dumps(metadata | {"format_version": 99})})
    with pytest.raises(CheckpointError, match="newer protoad_lib"):
        read_checkpoint(newer)


def _write_table(path, value, repeats):
    for _ in range(repeats):
        save_table(pd.DataFrame({"writer": [value] * 2000, "x": range(2000)}), path)


def test_two_writers_of_one_table_never_leave_it_mixed_or_half_written(tmp_path):
    path = tmp_path / "table.csv"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_table, args=(path, value, 15)) for value in ("a", "b")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    table = pd.read_csv(path)
    assert len(table) == 2000 and table.writer.nunique() == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_cache_command_lists_and_clears(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROTOAD_CACHE_DIR", str(tmp_path / "features"))
    FeatureCache(tmp_path / "features").save(CacheKey("t", "c", "train", "b", "w", ("l",), 8, 1), torch.ones(1, 2, 2, 2))
    ResultStore(tmp_path / "run" / "cache" / "evaluation", {"a": 1}).save([1], "bottle")
    (tmp_path / "features" / ".left.pt.abc.tmp").write_bytes(b"x" * 10)
    folders = cache_folders(results_dirs=[tmp_path / "run"])
    assert [f.kind for f in folders] == ["features", "results"]
    assert [len(f.files()) for f in folders] == [2, 1]
    assert cli.main(["cache", "list", "--results-dir", str(tmp_path / "run"), "--files"]) == 0
    listing = capsys.readouterr().out
    assert str(tmp_path / "features") in listing and "bottle__" in listing
    assert cli.main(["cache", "clear", "--features", "--results-dir", str(tmp_path / "run")]) == 0
    assert "removed 2 files" in capsys.readouterr().out
    assert CacheFolder("features", tmp_path / "features").files() == []
    assert len(CacheFolder("results", tmp_path / "run" / "cache").files()) == 1


def every_storable_type() -> dict:
    """One of each kind of value the experiments store, with the details a lossy format would lose."""
    table = pd.DataFrame({
        "category": ["weave", None], "K": [339, 114], "auroc": [0.1 + 0.2, float("nan")],
        "k": pd.array([1254, None], dtype="Int64"), "layers": pd.Series([("layer2", "layer3"), ("layer3", "layer4")], dtype=object),
        "half": np.array([1.1, 2.2], dtype=np.float32), "seen": [True, False],
    })
    return {
        "table": table,
        "indexed": pd.DataFrame({"x": [1.0, 2.0]}, index=pd.Index(["r1", "r2"], name="row")),
        "same_names": pd.DataFrame([[1, 2]], columns=["x", "x"]),
        "empty": pd.DataFrame(),
        "timed": (table, 12.3),
        "scores": torch.randn(5, dtype=torch.float64),
        "maps": {0: torch.rand(1, 8, 8), 3: torch.zeros(0, 2)},
        "counts": np.arange(4, dtype=np.int32),
        "mean": np.float64(1 / 3),
        "plain": [None, True, 2**70, float("inf"), "text", {"__type__": "a key like the format's own"}],
    }


def assert_same(back, original) -> None:
    assert type(back) is type(original)
    if isinstance(original, pd.DataFrame):
        pd.testing.assert_frame_equal(back, original, check_exact=True)
        assert back.dtypes.tolist() == original.dtypes.tolist() and back.columns.dtype == original.columns.dtype
        assert type(back.index) is type(original.index) and back.index.name == original.index.name
    elif isinstance(original, torch.Tensor):
        assert back.dtype == original.dtype and torch.equal(back, original)
    elif isinstance(original, np.ndarray):
        assert back.dtype == original.dtype and np.array_equal(back, original)
    elif isinstance(original, dict):
        assert [(type(key), key) for key in back] == [(type(key), key) for key in original]
        for key, value in original.items():
            assert_same(back[key], value)
    elif isinstance(original, (list, tuple)):
        assert len(back) == len(original)
        for item, original_item in zip(back, original):
            assert_same(item, original_item)
    else:
        assert back == original


def test_stored_results_round_trip_every_type_exactly_in_a_file_of_data_only(tmp_path):
    original = every_storable_type()
    path = ResultStore(tmp_path, {"a": 1}).save(original, "weave", "every")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        back = ResultStore(tmp_path, {"a": 1}).load("weave", "every")
    assert_same(back, original)
    assert path.suffix == ".safetensors"
    with safe_open(str(path), framework="pt") as handle:  # settings and structure are JSON, arrays tensors
        assert json.loads(handle.metadata()["protoad_result"])["settings"] == {"a": 1}


def test_results_of_the_evaluation_and_the_ablations_round_trip(tmp_path, tiny_benchmark, random_lite0):
    data = load_category(random_lite0, tiny_benchmark, "weave", resize=96, image_size=96, batch_size=4,
                         progress=False)
    store = ResultStore(tmp_path, {"a": 1})
    result = score_method(random_lite0, data, "tiny", "padim", {}, "cpu")
    store.save(asdict(result), "weave", "padim")
    assert_same(asdict(MethodResult(**store.load("weave", "padim"))), asdict(result))
    config = ProtoADConfig()
    timed_table = timed(lambda: sigma_ablation(random_lite0, [data], (2.0, 4.0), config,
                                               fit_baselines(random_lite0, [data], config)))
    store.save(timed_table, "weave", "sigma")
    assert_same(store.load("weave", "sigma"), timed_table)


@pytest.mark.parametrize("value", [{"where": pathlib.Path("x")}, [object()], np.array([object()]),
                                   pd.DataFrame({"c": pd.Categorical(["a"])}), pd.Series([1.0])])
def test_a_value_the_format_cannot_hold_is_refused_before_anything_is_written(tmp_path, value):
    with pytest.raises(TypeError, match="stored"):
        ResultStore(tmp_path, {"a": 1}).save(value, "weave")
    assert list(tmp_path.iterdir()) == []


def test_a_stored_result_of_an_unknown_type_is_refused_and_recomputed(tmp_path):
    store = ResultStore(tmp_path, {"a": 1})
    document = {"format_version": 1, "settings_digest": store.digest, "settings": store.settings,
                "result": {"__type__": "pickle", "bytes": "gASV"}}
    save_file({}, str(store.path("weave")), metadata={"protoad_result": json.dumps(document)})
    with pytest.warns(CacheWarning, match="unknown stored type 'pickle'"):
        assert store.computed(lambda: [1.0], "weave") == [1.0]
    assert store.load("weave") == [1.0]
