"""MobileNet builders for the two stages (:mod:`models.two_stage` routes images between them).

Stage 1 names the body part (a bundle's taxonomy: MURA's seven bone types and OTHER); stage 2
is one normal/abnormal classifier per assessed class, chosen by stage 1's prediction
(El-Saadawy et al., AICV 2020). Every network is a torchvision MobileNet
(:data:`ARCHITECTURES`: ``mobilenet_v2``, the paper's, or ``mobilenet_v3_small`` /
``mobilenet_v3_large``) built with ``weights=None``; ImageNet initialisation comes only from a
local state-dict file the user names (torchvision's ImageNet weights of the same architecture,
``width_mult=1.0``). The first convolution takes ``in_channels`` (1 for grey radiographs): for
ImageNet weights its RGB kernels are summed, the usual grey-scale adaptation.

Every network exposes torchvision's two parts, which serving relies on: ``features`` (the
convolutional trunk) and ``classifier`` (applied to the globally average-pooled features).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models import mobilenetv2, mobilenetv3

from models.manifest import ARCHITECTURES as MANIFEST_ARCHITECTURES
from models.taxonomy import MURA_TAXONOMY

logger = logging.getLogger(__name__)

#: Architecture of the paper, the default.
ARCHITECTURE = "mobilenet_v2"

_BUILDERS: Mapping[str, Callable[..., nn.Module]] = {
    "mobilenet_v2": tvm.mobilenet_v2,
    "mobilenet_v3_small": tvm.mobilenet_v3_small,
    "mobilenet_v3_large": tvm.mobilenet_v3_large,
}

#: Architectures a bundle may declare (defined with the manifest, built here).
ARCHITECTURES: tuple[str, ...] = MANIFEST_ARCHITECTURES


def _stem_block(model: nn.Module) -> nn.Sequential:
    """The first block of ``model.features`` (convolution, BatchNorm, activation)."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential) or not isinstance(features[0], nn.Sequential):
        raise TypeError(f"expected a torchvision MobileNet, got {type(model).__name__}")
    return features[0]


def _adapt_first_conv(model: nn.Module, in_channels: int, *, pretrained: bool) -> None:
    """Give the stem convolution ``in_channels`` inputs, summing pretrained RGB kernels."""
    block = _stem_block(model)
    stem = block[0]
    if not isinstance(stem, nn.Conv2d):
        raise TypeError(f"expected a stem convolution, got {stem!r}")
    if stem.in_channels == in_channels:
        return
    conv = nn.Conv2d(in_channels, stem.out_channels,
                     kernel_size=cast(tuple[int, int], stem.kernel_size),
                     stride=cast(tuple[int, int], stem.stride),
                     padding=cast(tuple[int, int], stem.padding), bias=stem.bias is not None)
    with torch.no_grad():
        if pretrained and in_channels == 1:
            conv.weight.copy_(stem.weight.sum(dim=1, keepdim=True))
        else:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out")
        if conv.bias is not None and stem.bias is not None:
            conv.bias.copy_(stem.bias)
    block[0] = conv


def _zero_init_residual(model: nn.Module) -> int:
    """Zero the last BatchNorm scale of every residual block; returns how many were zeroed."""
    zeroed = 0
    for module in model.modules():
        last: nn.Module | None = None
        if isinstance(module, mobilenetv2.InvertedResidual) and module.use_res_connect:
            last = module.conv[-1]
        elif isinstance(module, mobilenetv3.InvertedResidual) and module.use_res_connect:
            last = module.block[-1][-1]  # project: Conv2dNormActivation(conv, bn)
        if last is not None:
            if not isinstance(last, nn.BatchNorm2d):
                raise TypeError(f"expected BatchNorm2d at the end of a residual block, "
                                f"got {last!r}")
            nn.init.zeros_(last.weight)
            zeroed += 1
    return zeroed


def load_imagenet_weights(model: nn.Module, path: Path, *, arch: str = ARCHITECTURE) -> None:
    """Load a local torchvision ImageNet state dict into ``model``, except its classifier.

    Parameters
    ----------
    model : torch.nn.Module
        A 3-channel ``arch`` model built with ``width_mult=1.0``.
    path : Path
        State-dict file (e.g. torchvision's ``mobilenet_v2-7ebf99e0.pth``).
    arch : str
        Architecture name, for error messages.

    Raises
    ------
    ValueError
        When the file is missing, is not a state dict, or does not fit the model.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"imagenet_weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"imagenet_weights {path} is not a state dict of tensors")
    backbone = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    try:
        result = model.load_state_dict(backbone, strict=False)
    except RuntimeError as exc:
        raise ValueError(
            f"imagenet_weights {path} does not fit {arch} (ImageNet weights need "
            f"width_mult=1.0): {exc}"
        ) from exc
    missing = [k for k in result.missing_keys if not k.startswith("classifier.")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"imagenet_weights {path} does not match {arch}: missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )
    logger.info("loaded ImageNet backbone weights from %s", path)


def mobilenet(
    arch: str = ARCHITECTURE,
    *,
    num_classes: int,
    width_mult: float = 1.0,
    in_channels: int = 1,
    dropout: float = 0.2,
    imagenet_weights: Path | None = None,
    zero_init_residual: bool = False,
) -> nn.Module:
    """A torchvision MobileNet with a ``num_classes`` head and an ``in_channels`` stem.

    Parameters
    ----------
    arch : str
        One of :data:`ARCHITECTURES`.
    num_classes : int
        Outputs of the classifier head.
    width_mult : float
        Channel multiplier (must be 1.0 with ``imagenet_weights``).
    in_channels : int
        Input channels (1 for grey radiographs, or 3).
    dropout : float
        Dropout before the (last) linear layer of the head.
    imagenet_weights : Path, optional
        Local ImageNet state dict of ``arch`` for the backbone; the head stays freshly
        initialised.
    zero_init_residual : bool
        Without ``imagenet_weights``, zero the last BatchNorm scale of every residual block so
        that each block starts as the identity (Goyal et al. 2017); training from scratch on
        small data is then much more stable.

    Returns
    -------
    torch.nn.Module
        ``torchvision.models.MobileNetV2`` or ``MobileNetV3``, with ``features`` and
        ``classifier``.
    """
    if arch not in _BUILDERS:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not 0.0 < width_mult <= 4.0:
        raise ValueError(f"width_mult must be in (0, 4], got {width_mult}")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if imagenet_weights is not None and width_mult != 1.0:
        raise ValueError(f"imagenet_weights need width_mult=1.0, got {width_mult}")
    kwargs: dict[str, Any] = {"num_classes": num_classes, "width_mult": width_mult,
                              "dropout": dropout}
    model = _BUILDERS[arch](weights=None, **kwargs)
    if imagenet_weights is not None:
        load_imagenet_weights(model, imagenet_weights, arch=arch)
    elif zero_init_residual:
        _zero_init_residual(model)
    _adapt_first_conv(model, in_channels, pretrained=imagenet_weights is not None)
    return model


def mobilenet_v2(*, num_classes: int, width_mult: float = 1.0, in_channels: int = 1,
                 dropout: float = 0.2, imagenet_weights: Path | None = None,
                 zero_init_residual: bool = False) -> nn.Module:
    """:func:`mobilenet` with ``arch="mobilenet_v2"`` (the paper's architecture)."""
    return mobilenet("mobilenet_v2", num_classes=num_classes, width_mult=width_mult,
                     in_channels=in_channels, dropout=dropout,
                     imagenet_weights=imagenet_weights, zero_init_residual=zero_init_residual)


def mobilenet_v3_small(*, num_classes: int, width_mult: float = 1.0, in_channels: int = 1,
                       dropout: float = 0.2, imagenet_weights: Path | None = None,
                       zero_init_residual: bool = False) -> nn.Module:
    """:func:`mobilenet` with ``arch="mobilenet_v3_small"``."""
    return mobilenet("mobilenet_v3_small", num_classes=num_classes, width_mult=width_mult,
                     in_channels=in_channels, dropout=dropout,
                     imagenet_weights=imagenet_weights, zero_init_residual=zero_init_residual)


def mobilenet_v3_large(*, num_classes: int, width_mult: float = 1.0, in_channels: int = 1,
                       dropout: float = 0.2, imagenet_weights: Path | None = None,
                       zero_init_residual: bool = False) -> nn.Module:
    """:func:`mobilenet` with ``arch="mobilenet_v3_large"``."""
    return mobilenet("mobilenet_v3_large", num_classes=num_classes, width_mult=width_mult,
                     in_channels=in_channels, dropout=dropout,
                     imagenet_weights=imagenet_weights, zero_init_residual=zero_init_residual)


def body_part_classifier(*, arch: str = ARCHITECTURE, num_classes: int = len(MURA_TAXONOMY),
                         width_mult: float = 1.0, in_channels: int = 1, dropout: float = 0.2,
                         imagenet_weights: Path | None = None,
                         zero_init_residual: bool = False) -> nn.Module:
    """Stage 1: a MobileNet that names the body part (``num_classes`` = the taxonomy's size)."""
    return mobilenet(arch, num_classes=num_classes, width_mult=width_mult,
                     in_channels=in_channels, dropout=dropout,
                     imagenet_weights=imagenet_weights, zero_init_residual=zero_init_residual)


def abnormality_classifier(*, arch: str = ARCHITECTURE, width_mult: float = 1.0,
                           in_channels: int = 1, dropout: float = 0.2,
                           imagenet_weights: Path | None = None,
                           zero_init_residual: bool = False) -> nn.Module:
    """Stage 2: a MobileNet for one assessed class, class 0 = normal, class 1 = abnormal."""
    return mobilenet(arch, num_classes=2, width_mult=width_mult, in_channels=in_channels,
                     dropout=dropout, imagenet_weights=imagenet_weights,
                     zero_init_residual=zero_init_residual)
