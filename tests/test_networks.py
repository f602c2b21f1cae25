"""Tests of the MobileNet builders (models.training.networks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
import torchvision
from torch import nn
from torchvision.models import mobilenetv2, mobilenetv3

from models.serving.taxonomy import MURA_TAXONOMY
from models.training.networks import (
    ARCHITECTURE,
    ARCHITECTURES,
    abnormality_classifier,
    body_part_classifier,
    load_imagenet_weights,
    mobilenet,
    mobilenet_v2,
    mobilenet_v3_large,
    mobilenet_v3_small,
)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _part(model: nn.Module, name: str) -> nn.Sequential:
    """``model.features`` or ``model.classifier`` (torchvision MobileNets: both Sequential)."""
    part = getattr(model, name)
    assert isinstance(part, nn.Sequential), name
    return part


def _stem(model: nn.Module) -> nn.Conv2d:
    block = _part(model, "features")[0]
    assert isinstance(block, nn.Sequential)
    stem = block[0]
    assert isinstance(stem, nn.Conv2d)
    return stem


def _residual_last_bns(model: nn.Module) -> list[nn.BatchNorm2d]:
    bns = []
    for m in model.modules():
        if isinstance(m, mobilenetv2.InvertedResidual) and m.use_res_connect:
            bns.append(m.conv[-1])
        elif isinstance(m, mobilenetv3.InvertedResidual) and m.use_res_connect:
            bns.append(m.block[-1][-1])
    assert all(isinstance(b, nn.BatchNorm2d) for b in bns)
    return bns


def test_architectures() -> None:
    assert ARCHITECTURE == "mobilenet_v2"
    assert ARCHITECTURES == ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_arch_builds_with_a_grey_stem_and_serving_parts(arch: str) -> None:
    x = torch.randn(2, 1, 48, 48)
    body = body_part_classifier(arch=arch, num_classes=len(MURA_TAXONOMY), width_mult=0.35,
                                zero_init_residual=True).eval()
    abnormal = abnormality_classifier(arch=arch, width_mult=0.35).eval()
    with torch.inference_mode():
        assert body(x).shape == (2, len(MURA_TAXONOMY))
        assert abnormal(x).shape == (2, 2)
        # what the serving wrapper computes: features -> global average pool -> classifier
        pooled = F.adaptive_avg_pool2d(_part(abnormal, "features")(x), 1).flatten(1)
        logits = _part(abnormal, "classifier")(pooled)
        assert torch.allclose(logits, abnormal(x), atol=1e-6)
    stem = _stem(body)
    assert stem.in_channels == 1
    assert stem.stride == (2, 2) and stem.bias is None
    rgb = mobilenet(arch, num_classes=3, width_mult=0.35, in_channels=3).eval()
    assert _stem(rgb).in_channels == 3
    with torch.inference_mode():
        assert rgb(torch.randn(1, 3, 48, 48)).shape == (1, 3)
    assert _params(mobilenet(arch, num_classes=2, width_mult=0.5)) > _params(abnormal)


def test_named_builders_match_the_generic_one() -> None:
    for builder, arch in ((mobilenet_v2, "mobilenet_v2"),
                          (mobilenet_v3_small, "mobilenet_v3_small"),
                          (mobilenet_v3_large, "mobilenet_v3_large")):
        torch.manual_seed(0)
        a = builder(num_classes=2, width_mult=0.25, dropout=0.1)
        torch.manual_seed(0)
        b = mobilenet(arch, num_classes=2, width_mult=0.25, dropout=0.1)
        assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
        drop = [m for m in _part(a, "classifier").modules() if isinstance(m, nn.Dropout)]
        assert drop and drop[-1].p == 0.1


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_zero_init_residual(arch: str) -> None:
    zeroed = _residual_last_bns(mobilenet(arch, num_classes=2, width_mult=0.35,
                                          zero_init_residual=True))
    assert zeroed and all(not b.weight.detach().any() for b in zeroed)
    plain = _residual_last_bns(mobilenet(arch, num_classes=2, width_mult=0.35))
    assert any(b.weight.detach().any() for b in plain)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 2, "width_mult": 0.0}, "width_mult"),
        ({"num_classes": 2, "in_channels": 2}, "in_channels"),
        ({"num_classes": 2, "dropout": 1.0}, "dropout"),
        ({"num_classes": 2, "width_mult": 0.5, "imagenet_weights": Path("x.pth")},
         "width_mult=1.0"),
    ],
)
def test_builder_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mobilenet_v2(**kwargs)  # type: ignore[arg-type]


def test_unknown_arch() -> None:
    with pytest.raises(ValueError, match="arch must be one of"):
        mobilenet("resnet50", num_classes=2)


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """State dicts shaped like torchvision's ImageNet weights (random values), per arch."""
    paths = {}
    for arch in ("mobilenet_v2", "mobilenet_v3_small"):
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(weights=None, num_classes=1000)
        path = tmp_path_factory.mktemp("imagenet") / f"{arch}-fake.pth"
        torch.save(model.state_dict(), path)
        paths[arch] = path
    return paths


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small"])
def test_imagenet_weights_load_into_the_backbone(fake_imagenet: dict[str, Path],
                                                 arch: str) -> None:
    state = torch.load(fake_imagenet[arch], weights_only=True)
    model = mobilenet(arch, num_classes=2, imagenet_weights=fake_imagenet[arch])
    ours = model.state_dict()
    # stem: RGB kernels summed into the grey channel
    stem = ours["features.0.0.weight"]
    assert stem.shape[1] == 1
    assert torch.allclose(stem, state["features.0.0.weight"].sum(dim=1, keepdim=True))
    backbone = [k for k in state if k.startswith("features.") and k != "features.0.0.weight"]
    assert all(torch.equal(ours[k], state[k]) for k in backbone)
    # the head is new
    last = [k for k in ours if k.startswith("classifier.") and k.endswith(".weight")][-1]
    assert ours[last].shape[0] == 2
    rgb = mobilenet(arch, num_classes=2, in_channels=3, imagenet_weights=fake_imagenet[arch])
    assert torch.equal(rgb.state_dict()["features.0.0.weight"], state["features.0.0.weight"])


def test_imagenet_weights_errors(fake_imagenet: dict[str, Path], tmp_path: Path) -> None:
    v2 = fake_imagenet["mobilenet_v2"]
    with pytest.raises(ValueError, match="not found"):
        mobilenet_v2(num_classes=2, imagenet_weights=tmp_path / "missing.pth")
    small = torchvision.models.mobilenet_v2(weights=None, width_mult=0.5)
    with pytest.raises(ValueError, match="does not fit"):
        load_imagenet_weights(small, v2)
    with pytest.raises(ValueError, match="mobilenet_v3_small"):
        mobilenet("mobilenet_v3_small", num_classes=2, imagenet_weights=v2)
    odd = tmp_path / "odd.pth"
    torch.save([1, 2, 3], odd)
    with pytest.raises(ValueError, match="not a state dict"):
        mobilenet_v2(num_classes=2, imagenet_weights=odd)
    partial = tmp_path / "partial.pth"
    state = torch.load(v2, weights_only=True)
    del state["features.3.conv.0.0.weight"]
    torch.save(state, partial)
    with pytest.raises(ValueError, match="missing"):
        mobilenet_v2(num_classes=2, imagenet_weights=partial)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small"])
def test_fracture_net_keeps_imagenet_trunk_and_adds_a_stride_16_map(
        fake_imagenet: dict[str, Path], arch: str) -> None:
    from models.training.networks import FractureNet, fracture_classifier

    state = torch.load(fake_imagenet[arch], weights_only=True)
    net = fracture_classifier(arch=arch, imagenet_weights=fake_imagenet[arch])
    assert isinstance(net, FractureNet)
    ours = net.state_dict()
    backbone = [k for k in state if k.startswith("features.") and k != "features.0.0.weight"]
    assert backbone and all(torch.equal(ours[k], state[k]) for k in backbone)
    assert any(k.startswith("dense.") for k in ours)
    net.eval()
    with torch.no_grad():
        logits, fmap = net(torch.zeros(2, 1, 96, 128))
    assert logits.shape == (2, 2) and fmap.shape == (2, 6, 8)
    # the head starts from a low fracture prior
    assert float(torch.sigmoid(fmap).mean()) < 0.1


def test_fracture_net_map_sees_where_the_input_changes() -> None:
    """A change in one corner of the input moves the map there first (the head is local)."""
    from models.training.networks import fracture_classifier

    torch.manual_seed(0)
    net = fracture_classifier(width_mult=0.5).eval()
    x = torch.zeros(1, 1, 128, 128)
    y = x.clone()
    y[..., :16, :16] = 5.0
    with torch.no_grad():
        delta = (net(y)[1] - net(x)[1]).abs()[0]
    assert delta[0, 0] > 0 and delta[0, 0] >= delta[-1, -1]


def test_pooled_input_prepends_an_average_pooling() -> None:
    from models.training.networks import body_part_classifier, pooled_input

    model = body_part_classifier(num_classes=3, width_mult=0.5)
    assert pooled_input(model, 1) is model
    pooled = pooled_input(body_part_classifier(num_classes=3, width_mult=0.5), 2)
    assert isinstance(pooled.features[0], torch.nn.AvgPool2d)
    assert pooled(torch.zeros(2, 1, 64, 64)).shape == (2, 3)
