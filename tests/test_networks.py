"""Tests of the MobileNetV2 builders and two-stage routing (models.networks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual

from models.networks import (
    TwoStageNetwork,
    abnormality_classifier,
    bone_type_classifier,
    load_imagenet_weights,
    mobilenet_v2,
    two_stage_mobilenet_v2,
)
from models.results import BONE_TYPES


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_builders_output_shapes_and_stem() -> None:
    x = torch.randn(2, 1, 64, 64)
    bone = bone_type_classifier(width_mult=0.35).eval()
    abnormal = abnormality_classifier(width_mult=0.35).eval()
    assert bone(x).shape == (2, len(BONE_TYPES))
    assert abnormal(x).shape == (2, 2)
    assert bone.features[0][0].in_channels == 1
    rgb = mobilenet_v2(num_classes=3, width_mult=0.35, in_channels=3).eval()
    assert rgb(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert _params(mobilenet_v2(num_classes=2, width_mult=0.5)) > _params(abnormal)


def test_zero_init_residual() -> None:
    model = mobilenet_v2(num_classes=2, width_mult=0.35, zero_init_residual=True)
    residual = [m for m in model.modules() if isinstance(m, InvertedResidual) and m.use_res_connect]
    assert residual
    assert all(not m.conv[-1].weight.detach().any() for m in residual)
    plain = mobilenet_v2(num_classes=2, width_mult=0.35)
    assert any(m.conv[-1].weight.detach().any() for m in plain.modules()
               if isinstance(m, InvertedResidual) and m.use_res_connect)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 2, "width_mult": 0.0}, "width_mult"),
        ({"num_classes": 2, "in_channels": 2}, "in_channels"),
        ({"num_classes": 2, "width_mult": 0.5, "imagenet_weights": Path("x.pth")},
         "width_mult=1.0"),
    ],
)
def test_builder_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mobilenet_v2(**kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dict shaped like torchvision's ImageNet mobilenet_v2 weights (random values)."""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=1000)
    path = tmp_path_factory.mktemp("imagenet") / "mobilenet_v2-fake.pth"
    torch.save(model.state_dict(), path)
    return path


def test_imagenet_weights_load_into_the_backbone(fake_imagenet: Path) -> None:
    state = torch.load(fake_imagenet, weights_only=True)
    model = mobilenet_v2(num_classes=2, imagenet_weights=fake_imagenet)
    ours = model.state_dict()
    # stem: RGB kernels summed into the grey channel
    stem = ours["features.0.0.weight"]
    assert stem.shape[1] == 1
    assert torch.allclose(stem, state["features.0.0.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(ours["features.18.0.weight"], state["features.18.0.weight"])
    assert torch.equal(ours["features.5.conv.1.1.running_mean"],
                       state["features.5.conv.1.1.running_mean"])
    # the head is new
    assert ours["classifier.1.weight"].shape == (2, 1280)
    rgb = mobilenet_v2(num_classes=2, in_channels=3, imagenet_weights=fake_imagenet)
    assert torch.equal(rgb.state_dict()["features.0.0.weight"], state["features.0.0.weight"])


def test_imagenet_weights_errors(fake_imagenet: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        mobilenet_v2(num_classes=2, imagenet_weights=tmp_path / "missing.pth")
    small = torchvision.models.mobilenet_v2(weights=None, width_mult=0.5)
    with pytest.raises(ValueError, match="does not fit"):
        load_imagenet_weights(small, fake_imagenet)
    odd = tmp_path / "odd.pth"
    torch.save([1, 2, 3], odd)
    with pytest.raises(ValueError, match="not a state dict"):
        mobilenet_v2(num_classes=2, imagenet_weights=odd)
    partial = tmp_path / "partial.pth"
    state = torch.load(fake_imagenet, weights_only=True)
    del state["features.3.conv.0.0.weight"]
    torch.save(state, partial)
    with pytest.raises(ValueError, match="missing"):
        mobilenet_v2(num_classes=2, imagenet_weights=partial)


class _Constant(nn.Module):
    """Returns the same logits for every image."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


class _PickBone(nn.Module):
    """Stage-1 stub: the bone index is written in the image's first pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = x[:, 0, 0, 0].long()
        return nn.functional.one_hot(index, len(BONE_TYPES)).float() * 20.0


def _two_stage(**kwargs: bool) -> TwoStageNetwork:
    # head of bone i says "abnormal" with probability sigmoid(i - 3)
    heads = {b: _Constant([0.0, float(i - 3)]) for i, b in enumerate(BONE_TYPES)}
    return TwoStageNetwork(_PickBone(), heads, BONE_TYPES, **kwargs)


@pytest.mark.parametrize("flip_tta", [False, True])
def test_two_stage_routes_each_image_to_its_bone_head(flip_tta: bool) -> None:
    network = _two_stage(flip_tta=flip_tta)
    chosen = [6, 0, 3, 3, 5]
    x = torch.zeros(len(chosen), 1, 8, 8)
    for n, i in enumerate(chosen):
        x[n, 0, :, :] = float(i)  # the whole image, so mirroring keeps the routing
    out = network(x)
    assert out.bone_index.tolist() == chosen
    assert out.bone_probabilities.shape == (5, len(BONE_TYPES))
    assert torch.allclose(out.bone_probabilities.sum(1), torch.ones(5))
    expected = torch.sigmoid(torch.tensor([float(i - 3) for i in chosen]))
    assert torch.allclose(out.abnormal_probability, expected, atol=1e-6)


def test_flip_tta_averages_the_mirror_image() -> None:
    class LeftBright(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            left = x[:, 0, :, : x.shape[-1] // 2].mean(dim=(1, 2))
            return torch.stack([torch.zeros_like(left), 10.0 * left], dim=1)

    heads = {b: LeftBright() for b in BONE_TYPES}
    x = torch.zeros(1, 1, 8, 8)
    x[..., :4] = 1.0
    plain = TwoStageNetwork(_Constant([5.0, 0, 0, 0, 0, 0, 0]), heads)(x)
    tta = TwoStageNetwork(_Constant([5.0, 0, 0, 0, 0, 0, 0]), heads, flip_tta=True)(x)
    confident = float(torch.sigmoid(torch.tensor(10.0)))
    assert float(plain.abnormal_probability) == pytest.approx(confident)
    assert float(tta.abnormal_probability) == pytest.approx((confident + 0.5) / 2)


def test_two_stage_validation() -> None:
    heads = {b: _Constant([0.0, 0.0]) for b in BONE_TYPES}
    with pytest.raises(ValueError, match="one network per bone type"):
        TwoStageNetwork(_PickBone(), {k: v for k, v in heads.items() if k != "HAND"})
    with pytest.raises(ValueError, match="permutation"):
        TwoStageNetwork(_PickBone(), heads, ("HAND",) * 7)


def test_two_stage_mobilenet_v2_runs() -> None:
    network = two_stage_mobilenet_v2(width_mult=0.35).eval()
    with torch.inference_mode():
        out = network(torch.randn(3, 1, 64, 64))
    assert out.bone_probabilities.shape == (3, 7)
    assert out.bone_index.shape == (3,) and out.abnormal_probability.shape == (3,)
    assert ((out.abnormal_probability >= 0) & (out.abnormal_probability <= 1)).all()
    assert set(network.abnormal.keys()) == set(BONE_TYPES)
