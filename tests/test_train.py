"""Tests of training (models.training.train), on the session's phantom and trained bundle."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from models.evaluation import evaluate
from models.serving.manifest import open_bundle, sha256_file
from models.training import train
from models.training.networks import mobilenet_v2
from models.training.train import (
    PRESETS,
    CheckpointDir,
    TrainingOptions,
    augment_batch,
    command_line,
    mura_class_weights,
    resolve_args,
    resolve_device,
)

REPO = Path(__file__).resolve().parents[1]


def _manifest(bundle: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((bundle / "manifest.json").read_text())
    return data


def test_trained_bundle_is_accurate_on_the_phantom(trained_bundle: Path) -> None:
    """The fixed-seed test bundle reaches the bar on the phantom's valid split."""
    manifest = _manifest(trained_bundle)
    metrics = manifest["metrics"]
    assert metrics["stage1"]["accuracy"]["value"] >= 0.95, metrics["stage1"]
    study = metrics["merged"]["study"]["pooled"]
    assert study["accuracy"]["value"] >= 0.90, study
    assert study["kappa"]["value"] >= 0.8, study
    assessed = [c["name"] for c in manifest["taxonomy"]["classes"] if c["assessed"]]
    assert set(metrics["merged"]["study"]["per_class"]) == set(assessed)


def test_evaluate_recomputes_the_accuracy(trained_bundle: Path, phantom_root: Path,
                                          tmp_path: Path) -> None:
    out = tmp_path / "report"
    args = evaluate.get_args_parser().parse_args(
        ["--data", str(phantom_root), "--bundle", str(trained_bundle), "--split", "valid",
         "--out", str(out), "--bootstrap", "100"])
    assert evaluate.main(args) == 0
    recomputed = json.loads((out / "metrics.json").read_text())
    assert recomputed["stage1"]["accuracy"]["value"] >= 0.95, recomputed["stage1"]
    assert recomputed["merged"]["study"]["pooled"]["accuracy"]["value"] >= 0.90
    # the manifest's metrics (PyTorch, at training time) and ossa evaluate's (ONNX Runtime)
    stored = _manifest(trained_bundle)["metrics"]
    for key in ("stage1", "merged"):
        a = stored[key]["accuracy"] if key == "stage1" else stored[key]["study"]["pooled"][
            "accuracy"]
        b = (recomputed[key]["accuracy"] if key == "stage1"
             else recomputed[key]["study"]["pooled"]["accuracy"])
        assert a["value"] == pytest.approx(b["value"], abs=0.01)


def test_manifest_records_provenance(trained_bundle: Path, phantom_root: Path) -> None:
    manifest = _manifest(trained_bundle)
    training = manifest["training"]
    assert training["seed"] == 0 and training["preset"] == "test"
    assert training["deterministic"] is True
    assert training["arch"] == "mobilenet_v2" and training["device"] == "cpu"
    assert training["amp_dtype"] is None and training["resumed_from"] is None
    assert set(training["final_epoch"]) >= {"body_part", "shared_abnormal"}
    for weights in training["class_weights"].values():
        assert len(weights) == 2 and sum(weights) == pytest.approx(1.0)
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
    for file, entry in manifest["files"].items():
        assert sha256_file(trained_bundle / file) == entry["sha256"]
    loaded = open_bundle(trained_bundle)
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


def _toy(n: int = 64, side: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 1, side, side, generator=generator) * 0.3 - 1.0
    labels = torch.arange(n) % 2
    a, b = side * 5 // 16, side * 11 // 16
    images[labels == 1, :, a:b, a:b] += 2.0  # class 1 has a bright square
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


def test_train_network_resumes_bit_for_bit() -> None:
    """Stopping after epoch 2 and resuming from its state gives the uninterrupted weights."""
    images, labels = _toy(24, side=32)
    options = TrainingOptions(epochs=3, batch_size=8, lr=2e-3)  # augmented, with dropout
    weights = torch.tensor([0.25, 0.75])

    def run(resume: dict[str, Any] | None,
            keep: Callable[[dict[str, Any]], None] | None) -> dict[str, torch.Tensor]:
        generator = train._seeded(0)
        model = mobilenet_v2(num_classes=2, width_mult=0.25, zero_init_residual=True)
        train.train_network(model, images, labels, options, generator=generator, fill=-1.0,
                            device=torch.device("cpu"), name="toy", class_weights=weights,
                            resume=resume, on_epoch=keep)
        return model.state_dict()

    states: list[dict[str, Any]] = []
    torch.use_deterministic_algorithms(True)
    try:
        whole = run(None, lambda state: states.append(
            torch.load(_roundtrip(state), weights_only=True)))
        torch.manual_seed(123)  # the resumed run must not depend on the global RNG before it
        resumed = run(states[1], None)
    finally:
        torch.use_deterministic_algorithms(False)
    assert [s["epoch"] for s in states] == [1, 2, 3]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def _roundtrip(state: dict[str, Any]) -> Any:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_mura_class_weights() -> None:
    weights = mura_class_weights(torch.tensor([1, 0, 0, 0]))
    # w_abnormal = N_normal / N, w_normal = N_abnormal / N
    assert weights.tolist() == [0.25, 0.75]
    with pytest.raises(ValueError, match="both normal and abnormal"):
        mura_class_weights(torch.tensor([0, 0]))


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
    assert train.amp_dtype(torch.device("cpu")) is None


def test_checkpoint_dir_keeps_the_newest(tmp_path: Path) -> None:
    store = CheckpointDir(tmp_path / "ckpt")
    assert not store.exists() and store.latest() is None
    for position, network, epoch in ((0, "body_part", 1), (0, "body_part", 2),
                                     (1, "shared_abnormal", 1)):
        store.save({"format": train.CHECKPOINT_FORMAT, "position": position,
                    "network": network, "epoch": epoch, "x": torch.arange(3)})
    assert [p.name for p in store.files()] == ["01-shared_abnormal-epoch0001.pt"]
    assert not list(store.path.glob(".*.tmp"))
    latest = store.latest()
    assert latest is not None and latest["network"] == "shared_abnormal"
    (store.path / "02-x-epoch0001.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="readable checkpoint"):
        store.latest()
    store.clear()
    assert not store.path.exists()


# --- end to end: resumable training on a tiny MURA-layout dataset ---------------------------

#: Classes of the tiny dataset: two assessed bone types and OTHER (no stage-2 network).
_TINY_CLASSES = ("ELBOW", "HAND", "OTHER")


def _write_tiny_mura(root: Path, *, train_studies: int = 6, valid_studies: int = 2,
                     images: int = 2, side: int = 40) -> Path:
    """A MURA-v1.1 folder of small grey PNGs: per class, half the studies abnormal."""
    rng = np.random.default_rng(0)
    dataset = root / "MURA-v1.1"
    for split, n_studies in (("train", train_studies), ("valid", valid_studies)):
        paths, labels = [], []
        for c, name in enumerate(_TINY_CLASSES):
            for k in range(n_studies):
                label = k % 2
                study = f"MURA-v1.1/{split}/XR_{name}/patient{c * 100 + k:05d}/" \
                        f"study1_{'positive' if label else 'negative'}/"
                labels.append(f"{study},{label}")
                for i in range(1 if split == "valid" else images):
                    pixels = rng.integers(0, 60, size=(side, side))
                    pixels[8 + 6 * c : 20 + 6 * c, 10:30] = 200  # class-dependent bar
                    if label:
                        pixels[25:33, 25:33] = 255  # the "finding"
                    file = root / study / f"image{i + 1}.png"
                    file.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(pixels.astype(np.uint8), mode="L").save(file)
                    paths.append(f"{study}image{i + 1}.png")
        (dataset / f"{split}_image_paths.csv").write_text("\n".join(paths) + "\n")
        (dataset / f"{split}_labeled_studies.csv").write_text("\n".join(labels) + "\n")
    return root


def _tiny_argv(data: Path, out: Path) -> list[str]:
    return ["--data", str(data), "--out", str(out), "--preset", "test", "--seed", "3",
            "--input-size", "32", "--kernel-size", "8", "--width-mult", "0.25",
            "--batch-size", "8", "--epochs", "3", "--shared-epochs", "3",
            "--abnormal-epochs", "3", "--threads", "1", "--device", "cpu"]


class _Captured:
    """Stands in for models.training.calibrate: records what training hands over."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def calibrate_and_save(self, network: Any, **kwargs: Any) -> Path:
        json.dumps(kwargs["training"])  # JSON-ready
        self.calls.append({"state": {k: v.clone() for k, v in network.state_dict().items()},
                           "network": network, **kwargs})
        out = Path(kwargs["args"].out)
        out.mkdir(parents=True)
        return out


def _train_in_process(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    captured = _Captured()
    fake = types.ModuleType("models.training.calibrate")
    fake.calibrate_and_save = captured.calibrate_and_save  # type: ignore[attr-defined]
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "models.training.calibrate", fake)
        assert train.main(train.get_args_parser().parse_args(argv)) == 0
    assert len(captured.calls) == 1
    return captured.calls[0]


def _wait_for(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def test_resume_after_kill_gives_the_same_weights(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data = _write_tiny_mura(tmp_path / "data")

    # 1. uninterrupted
    whole = _train_in_process(_tiny_argv(data, tmp_path / "whole"), monkeypatch)
    taxonomy = whole["taxonomy"]
    assert taxonomy.names == _TINY_CLASSES and taxonomy.assessed == ("ELBOW", "HAND")
    network = whole["network"]
    assert set(network.abnormal) == {"ELBOW", "HAND"}  # OTHER has no stage-2 network
    assert network.body_part.classifier[-1].out_features == 3
    training = whole["training"]
    assert training["classes"] == list(_TINY_CLASSES)
    assert training["data"]["train_images_per_class"] == {"ELBOW": 12, "HAND": 12, "OTHER": 12}
    assert training["class_weights"]["shared_abnormal"] == [0.5, 0.5]
    assert set(training["final_epoch"]) == {"body_part", "shared_abnormal", "abnormal_ELBOW",
                                            "abnormal_HAND"}
    assert training["resumed_from"] is None and training["device"] == "cpu"
    assert set(whole) >= {"train", "valid", "valid_studies", "taxonomy", "args", "device"}
    assert not (tmp_path / "whole.checkpoints").exists()  # cleared after the save

    # 2. the same run in a subprocess, killed once the shared network has a checkpoint
    out = tmp_path / "resumed"
    checkpoints = tmp_path / "resumed.checkpoints"
    trigger = checkpoints / "01-shared_abnormal-epoch0001.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "worker", "train",
                                 *_tiny_argv(data, out)],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for(lambda: trigger.exists() or proc.poll() is not None, timeout=120,
                      what=f"{trigger.name}")
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    assert not out.exists()
    left = [p.name for p in checkpoints.glob("*.pt")]
    assert left and all(not name.startswith(("02-", "03-")) or "epoch0003" not in name
                        for name in left), left  # killed before the last network finished

    # 3. without --resume an existing checkpoint directory is refused
    with pytest.raises(FileExistsError, match="--resume"):
        train.main(train.get_args_parser().parse_args(_tiny_argv(data, out)))
    with pytest.raises(ValueError, match=r"other options or data .*batch_size"):
        train.main(train.get_args_parser().parse_args(
            [*_tiny_argv(data, out), "--resume", "--batch-size", "6"]))

    # 4. resumed: bitwise the same networks as the uninterrupted run
    resumed = _train_in_process([*_tiny_argv(data, out), "--resume"], monkeypatch)
    assert resumed["training"]["resumed_from"] is not None
    assert resumed["state"].keys() == whole["state"].keys()
    differ = [k for k in whole["state"] if not torch.equal(whole["state"][k], resumed["state"][k])]
    assert not differ, differ
    assert not checkpoints.exists()


def test_box_masks_weigh_normal_films_everywhere_and_fractures_in_their_boxes() -> None:
    boxes = [torch.zeros(0, 4), torch.tensor([[4.0, 8.0, 12.5, 16.0]]), torch.zeros(0, 4)]
    positive, weight = train.box_masks(boxes, torch.tensor([True, True, False]),
                                       torch.tensor([0, 1, 1]), 32)
    assert positive.shape == weight.shape == (3, 1, 32, 32)
    assert positive[0].sum() == 0 and weight[0].min() == 1  # normal: negative everywhere
    assert positive[1, 0, 8:16, 4:13].min() == 1 and positive[1].sum() == 8 * 9
    assert torch.equal(weight[1], positive[1])  # fractured: its boxes only
    assert weight[2].sum() == 0  # fractured, unannotated: the map is not trained


def test_dense_loss_is_low_for_the_right_map_and_balanced() -> None:
    positive = torch.zeros(1, 1, 64, 64)
    positive[..., 16:32, 16:32] = 1.0
    weight = torch.ones_like(positive)
    right = torch.full((1, 4, 4), -6.0)
    right[0, 1, 1] = 6.0
    wrong = -right
    assert train.dense_loss(right, positive, weight, stride=16) < 0.01
    assert train.dense_loss(wrong, positive, weight, stride=16) > 5.0
    # one positive cell weighs as much as the fifteen negative ones
    all_negative = torch.full((1, 4, 4), -6.0)
    miss = train.dense_loss(all_negative, positive, weight, stride=16)
    assert miss == pytest.approx(6.0, abs=0.01)
    assert train.dense_loss(right, positive, torch.zeros_like(weight), stride=16) == 0


def _boxed_toy(n: int = 48, side: int = 64) -> tuple[torch.Tensor, torch.Tensor,
                                                      list[torch.Tensor]]:
    """Noise films; abnormal ones have a bright 12 px square at a random place, boxed."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 1, side, side, generator=generator) * 0.3 - 1.0
    labels = torch.arange(n) % 2
    boxes: list[torch.Tensor] = []
    for i in range(n):
        if labels[i]:
            x, y = (int(v) for v in torch.randint(4, side - 16, (2,), generator=generator))
            images[i, :, y : y + 12, x : x + 12] += 2.5
            boxes.append(torch.tensor([[float(x), float(y), x + 12.0, y + 12.0]]))
        else:
            boxes.append(torch.zeros(0, 4))
    return images.half(), labels, boxes


def test_fracture_map_learns_where_the_boxes_are() -> None:
    from models.training.networks import fracture_classifier

    images, labels, boxes = _boxed_toy()
    options = TrainingOptions(epochs=12, batch_size=8, lr=3e-3, augment=True, photometric=True,
                              ema=True, normal_ratio=1.0)
    torch.manual_seed(0)
    model = fracture_classifier(width_mult=0.35, zero_init_residual=True)
    history = train.train_network(
        model, images, labels, options, generator=torch.Generator().manual_seed(0), fill=-1.0,
        device=torch.device("cpu"), name="toy", boxes=boxes,
        annotated=torch.ones(len(labels), dtype=torch.bool), normalization=(0.449, 0.226))
    assert "dense_loss" in history[-1] and history[-1]["dense_loss"] < history[0]["dense_loss"]
    with torch.inference_mode():
        _, fmap = model(images.float())
    hits = 0
    for i in torch.nonzero(labels == 1).flatten().tolist():
        row, col = divmod(int(fmap[i].argmax()), fmap.shape[-1])
        x0, y0, x1, y1 = boxes[i][0].tolist()
        # the peak cell (16 px) overlaps the box
        hits += int(col * 16 < x1 and (col + 1) * 16 > x0 and row * 16 < y1
                    and (row + 1) * 16 > y0)
    assert hits >= 0.8 * int(labels.sum())
    normal_peak = torch.sigmoid(fmap[labels == 0]).amax(dim=(1, 2)).median()
    fractured_peak = torch.sigmoid(fmap[labels == 1]).amax(dim=(1, 2)).median()
    assert fractured_peak > normal_peak


def test_normal_ratio_draws_balanced_epochs() -> None:
    images, labels = _toy(40, side=32)
    labels = (torch.arange(40) < 8).long()  # 8 abnormal, 32 normal
    options = TrainingOptions(epochs=2, batch_size=4, lr=1e-3, augment=False, normal_ratio=1.5)
    model = mobilenet_v2(num_classes=2, width_mult=0.25, zero_init_residual=True)
    history = train.train_network(model, images, labels, options,
                                  generator=torch.Generator().manual_seed(0), fill=-1.0,
                                  device=torch.device("cpu"), name="toy")
    # every epoch: the 8 abnormal images and 12 normal ones, 5 batches of 4
    assert all(record["images_per_second"] > 0 for record in history)
    assert train._class_weights(labels, "toy", 1.5).tolist() == pytest.approx([0.4, 0.6])
    with pytest.raises(ValueError, match="normal_ratio"):
        TrainingOptions(epochs=1, batch_size=2, lr=1e-3, normal_ratio=0)


def test_dense_ema_training_resumes_bit_for_bit() -> None:
    from models.training.networks import fracture_classifier

    images, labels, boxes = _boxed_toy(16, side=32)
    options = TrainingOptions(epochs=3, batch_size=4, lr=2e-3, photometric=True, ema=True,
                              normal_ratio=1.0)

    def run(resume: dict[str, Any] | None,
            keep: Callable[[dict[str, Any]], None] | None) -> dict[str, torch.Tensor]:
        generator = train._seeded(0)
        model = fracture_classifier(width_mult=0.25, zero_init_residual=True)
        train.train_network(model, images, labels, options, generator=generator, fill=-1.0,
                            device=torch.device("cpu"), name="toy", resume=resume,
                            on_epoch=keep, boxes=boxes,
                            annotated=torch.ones(len(labels), dtype=torch.bool))
        return model.state_dict()

    states: list[dict[str, Any]] = []
    torch.use_deterministic_algorithms(True)
    try:
        whole = run(None, lambda state: states.append(
            torch.load(_roundtrip(state), weights_only=True)))
        torch.manual_seed(123)
        resumed = run(states[1], None)
    finally:
        torch.use_deterministic_algorithms(False)
    assert states[1]["ema"] is not None
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
