"""Every registered method goes through the same life: fit on a tiny category, save, load, predict the same maps."""

import pytest
import torch

from protoad_lib.checkpoint import load_detector, save_detector
from protoad_lib.cli import build_parser
from protoad_lib.data import AnomalyDataset
from protoad_lib.methods import REGISTRY, bench_names, get_method, make_detector, method_label, method_names
from protoad_lib.methods.protoad import ProtoADConfig

SIZE, RESIZE = 64, 73
#: Small settings so every method fits in seconds; everything else is the registry's default.
FAST = {"protoad": {"config": ProtoADConfig(max_vectors=600)}, "prn": {"epochs": 2}}


def _subparser(name: str):
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    return commands.choices[name]


def _choices(command: str, flag: str) -> tuple[str, ...]:
    return tuple(next(a for a in _subparser(command)._actions if flag in a.option_strings).choices)


OURS = [name for name, spec in REGISTRY.items() if not spec.peer]  # peers (anomalib's) are timed, not saved


@pytest.mark.parametrize("name", OURS)
def test_method_fits_saves_loads_and_predicts_the_same_maps(name, tiny_benchmark, random_lite0, tmp_path):
    spec = get_method(name)
    detector = make_detector(name, random_lite0, **FAST.get(spec.variant_of or name, {}))
    assert isinstance(detector, spec.detector)
    detector.progress = False
    train = AnomalyDataset(tiny_benchmark, "weave", "train", resize=RESIZE, crop=SIZE)
    test = AnomalyDataset(tiny_benchmark, "weave", "test", resize=RESIZE, crop=SIZE)
    detector.fit(train, batch_size=4, progress=False)
    before = detector.predict(test, batch_size=4, progress=False)
    assert before.maps.shape == (len(test), SIZE, SIZE) and before.scores.shape == (len(test),)
    assert torch.isfinite(before.maps).all()

    path = save_detector(detector, tmp_path / f"{name}.safetensors", image_size=SIZE, resize=RESIZE)
    loaded, metadata = load_detector(path, backbone=random_lite0)
    assert metadata["method"] == detector.method and type(loaded) is spec.detector
    assert loaded.config() == detector.config() and "sigma" in loaded.config()
    after = loaded.predict(test, batch_size=4, progress=False)
    torch.testing.assert_close(after.maps, before.maps, rtol=0, atol=1e-6)
    torch.testing.assert_close(after.scores, before.scores, rtol=0, atol=1e-6)
    size = detector.fitted_size()
    assert size is None or (isinstance(size, int) and size > 0)
    assert isinstance(detector.fit_report(), dict) and isinstance(detector.fit_summary() or "", str)


@pytest.mark.parametrize("name", method_names())
def test_command_line_defaults_build_the_registry_default(name, random_lite0):
    """A method's own flags, left at their defaults, build the detector the registry builds (the command line
    changes no number), and its options in a run of each profile build a detector."""
    from protoad_lib.profiles import PROFILES

    for argv in (["fit", "--out", "m"], ["evaluate"]):
        args = build_parser().parse_args([*argv, "--data-root", "d", "--category", "c", "--method", name])
        declared = get_method(name).detector.options_from_cli(args)
        assert make_detector(name, random_lite0, **declared).config() == make_detector(name, random_lite0).config()
    for profile in PROFILES.values():
        for device in ("cpu", "cuda"):
            make_detector(name, random_lite0, **get_method(name).detector.run_options(profile, device))


def test_command_line_choices_are_the_registry():
    assert _choices("fit", "--method") == method_names() == _choices("evaluate", "--method")
    assert set(method_names()) <= set(REGISTRY) and set(bench_names()) <= set(REGISTRY)
    bench_default = next(a for a in _subparser("bench")._actions if "--methods" in a.option_strings).default
    assert tuple(bench_default.split(",")) == bench_names()


def test_variants_build_their_method_with_preset_options(random_lite0):
    for name, spec in REGISTRY.items():
        if spec.variant_of:
            assert REGISTRY[spec.variant_of].detector is spec.detector
            detector = make_detector(name, random_lite0)
            assert all(detector.options()[key] == value for key, value in spec.options.items())
    assert method_label("patchcore_1") == "PatchCore-1%" and method_label("backbone") == "backbone"


def test_unknown_method_is_a_clear_error(random_lite0):
    with pytest.raises(ValueError, match="choose one of"):
        make_detector("nope", random_lite0)
