"""Tests of training (models.train), on the session's phantom and trained bundle."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch

from models import evaluate, train
from models.bundle import load_bundle, sha256_file
from models.networks import mobilenet_v2
from models.train import PRESETS, TrainingOptions, augment_batch, command_line, resolve_args


def _manifest(bundle: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((bundle / "manifest.json").read_text())
    return data


def test_trained_bundle_is_accurate_on_the_phantom(trained_bundle: Path) -> None:
    """The fixed-seed test bundle reaches the bar on the phantom's valid split."""
    metrics = _manifest(trained_bundle)["metrics"]
    assert metrics["split"] == "valid"
    assert metrics["bone_accuracy"] >= 0.95, metrics
    assert metrics["study_accuracy"] >= 0.90, metrics
    assert metrics["kappa"] >= 0.8
    assert set(metrics["per_bone"]) == set(_manifest(trained_bundle)["bone_types"])


def test_evaluate_recomputes_the_accuracy(trained_bundle: Path, phantom_root: Path,
                                          tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    args = evaluate.get_args_parser().parse_args(
        ["--data", str(phantom_root), "--bundle", str(trained_bundle), "--split", "valid",
         "--json", str(out)])
    assert evaluate.main(args) == 0
    recomputed = json.loads(out.read_text())
    assert recomputed["bone_accuracy"] >= 0.95, recomputed
    assert recomputed["study_accuracy"] >= 0.90, recomputed


def test_manifest_records_provenance(trained_bundle: Path, phantom_root: Path) -> None:
    manifest = _manifest(trained_bundle)
    training = manifest["training"]
    assert training["seed"] == 0 and training["preset"] == "test"
    assert training["deterministic"] is True
    command = shlex.split(training["command"])
    assert command[:2] == ["ossa", "train"]
    assert command[command.index("--seed") + 1] == "0"
    assert command[command.index("--data") + 1] == str(phantom_root)
    assert isinstance(training["argv"], list)
    options = training["options"]
    for key, value in PRESETS["test"].items():
        assert options[key] == value
    assert training["data"]["train_studies"] > 0 and training["data"]["valid_images"] > 0
    assert training["versions"]["torch"] == torch.__version__
    assert manifest["preprocessing"]["input_size"] == PRESETS["test"]["input_size"]
    assert manifest["width_mult"] == PRESETS["test"]["width_mult"]
    for file, entry in manifest["weights"].items():
        assert sha256_file(trained_bundle / file) == entry["sha256"]
    loaded = load_bundle(trained_bundle)
    assert loaded.manifest.training["seed"] == 0


def test_recorded_command_reproduces_the_options(trained_bundle: Path) -> None:
    training = _manifest(trained_bundle)["training"]
    argv = shlex.split(training["command"])[2:]
    again = resolve_args(train.get_args_parser().parse_args(argv))
    recorded = training["options"]
    assert {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(again).items()
            if k in recorded} == recorded


def test_resolve_args_presets_and_overrides(tmp_path: Path) -> None:
    parser = train.get_args_parser(add_help=False)
    demo = resolve_args(parser.parse_args(["--data", "d", "--out", str(tmp_path)]))
    assert demo.preset == "demo"
    assert demo.epochs == PRESETS["demo"]["epochs"] and demo.augment is True
    assert demo.threads >= 1
    explicit = resolve_args(parser.parse_args(
        ["--data", "d", "--out", "o", "--preset", "test", "--epochs", "1", "--no-augment",
         "--width-mult", "1.0", "--threads", "1"]))
    assert explicit.epochs == 1 and explicit.augment is False and explicit.width_mult == 1.0
    assert explicit.shared_epochs == PRESETS["test"]["shared_epochs"]
    assert "--no-augment" in command_line(explicit)
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "d", "--out", "o", "--preset", "huge"])


def test_existing_bundle_is_not_overwritten(trained_bundle: Path) -> None:
    before = (trained_bundle / "manifest.json").read_bytes()
    args = train.get_args_parser().parse_args(
        ["--data", "nowhere", "--out", str(trained_bundle), "--preset", "test"])
    with pytest.raises(FileExistsError, match="overwrite"):
        train.main(args)
    assert (trained_bundle / "manifest.json").read_bytes() == before
    # main restores the process-wide torch settings it changed
    assert not torch.are_deterministic_algorithms_enabled()


def test_training_options_validation() -> None:
    with pytest.raises(ValueError, match="epochs"):
        TrainingOptions(epochs=0, batch_size=8, lr=1e-3)
    with pytest.raises(ValueError, match="batch_size"):
        TrainingOptions(epochs=1, batch_size=1, lr=1e-3)
    with pytest.raises(ValueError, match="lr"):
        TrainingOptions(epochs=1, batch_size=8, lr=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        TrainingOptions(epochs=1, batch_size=8, lr=1e-3, label_smoothing=1.0)


def test_augment_batch_is_seeded_and_keeps_the_background() -> None:
    images = torch.full((4, 1, 32, 32), -2.0)
    images[:, :, 8:24, 12:20] = 1.0
    a = augment_batch(images, torch.Generator().manual_seed(1), fill=-2.0)
    b = augment_batch(images, torch.Generator().manual_seed(1), fill=-2.0)
    c = augment_batch(images, torch.Generator().manual_seed(2), fill=-2.0)
    assert a.shape == images.shape and torch.equal(a, b) and not torch.equal(a, c)
    # corners stay background (the transform is small) and the content survives
    assert torch.allclose(a[:, :, 0, 0], torch.tensor(-2.0))
    assert (a > 0).any(dim=(1, 2, 3)).all()


def _toy(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 1, 64, 64, generator=generator) * 0.3 - 1.0
    labels = torch.arange(n) % 2
    images[labels == 1, :, 20:44, 20:44] += 2.0  # class 1 has a bright square
    return images.half(), labels


def test_train_network_learns_and_is_reproducible() -> None:
    images, labels = _toy()
    options = TrainingOptions(epochs=10, batch_size=8, lr=2e-3, augment=False)
    weights = []
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(2):
            torch.manual_seed(0)
            model = mobilenet_v2(num_classes=2, width_mult=0.35, zero_init_residual=True)
            history = train.train_network(
                model, images, labels, options, generator=torch.Generator().manual_seed(0),
                fill=-1.0, device=torch.device("cpu"), name="toy")
            weights.append(model.state_dict())
    finally:
        torch.use_deterministic_algorithms(False)
    assert len(history) == 10 and history[-1]["loss"] < history[0]["loss"]
    assert not model.training
    with torch.inference_mode():
        accuracy = (model(images.float()).argmax(1) == labels).float().mean()
    assert accuracy >= 0.9
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
