"""MobileNet builders for the two stages (:mod:`models.training.two_stage` routes images between
them).

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
import torch.nn.functional as F  # noqa: N812
import torchvision.models as tvm
from torch import nn
from torchvision.models import mobilenetv2, mobilenetv3

from models.serving.manifest import ARCHITECTURES as MANIFEST_ARCHITECTURES
from models.serving.taxonomy import MURA_TAXONOMY

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


#: Output stride of the fracture map (input pixels per map cell).
MAP_STRIDE = 16
#: Channels of the fracture head's hidden layer.
_DENSE_CHANNELS = 64


def _probe_shapes(features: nn.Sequential) -> list[tuple[int, int]]:
    """(channels, side) after each block of ``features`` for a 64 x 64 input; run in eval
    mode, so that BatchNorm statistics (ImageNet's, say) are left as they are."""
    training = features.training
    features.eval()
    shapes = []
    try:
        with torch.no_grad():
            x = torch.zeros(1, _stem_block_in_channels(features), 64, 64)
            for block in features:
                x = block(x)
                shapes.append((int(x.shape[1]), int(x.shape[-1])))
    finally:
        features.train(training)
    return shapes


def _stride16_split(shapes: list[tuple[int, int]]) -> int:
    """Number of leading blocks whose output is at stride 16 or finer."""
    return max(i + 1 for i, (_, side) in enumerate(shapes) if side >= 64 // MAP_STRIDE)


def _stem_block_in_channels(features: nn.Sequential) -> int:
    block = features[0]
    stem = block[0] if isinstance(block, nn.Sequential) else None
    if not isinstance(stem, nn.Conv2d):
        raise TypeError(f"expected a stem convolution, got {stem!r}")
    return int(stem.in_channels)


class FractureNet(nn.Module):
    """A stage-2 MobileNet with a dense fracture head beside its image-level classifier.

    The head predicts a fracture logit per cell of stride :data:`MAP_STRIDE` (16): the
    stride-16 features of the trunk, fused with the last (stride-32) feature map upsampled
    twice, go through a 3x3 and a 1x1 convolution (a one-level feature pyramid, Lin et al.
    2017). Trained with finding boxes (cells a box covers positive, every cell of a normal
    film negative), the map locates findings; the image-level classifier (``classifier`` on
    the pooled last features, as in the paper) is kept, and serving derives the image
    probability from either or both (:class:`models.serving.manifest.ImageScore`).

    Parameters
    ----------
    model : torch.nn.Module
        A torchvision MobileNet (``features`` + ``classifier``, 2 outputs).

    Attributes
    ----------
    features, classifier : torch.nn.Module
        The MobileNet's, unchanged (state-dict keys ``features.*``, ``classifier.*``).
    dense : torch.nn.ModuleDict
        The fracture head.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        features, classifier = getattr(model, "features", None), getattr(model, "classifier",
                                                                           None)
        if not isinstance(features, nn.Sequential) or not isinstance(classifier, nn.Module):
            raise TypeError("model must be a torchvision MobileNet (features, classifier)")
        self.features = features
        self.classifier = classifier
        shapes = _probe_shapes(features)
        self.split = _stride16_split(shapes)
        c = _DENSE_CHANNELS
        self.dense = nn.ModuleDict({
            "lateral": nn.Conv2d(shapes[self.split - 1][0], c, 1),
            "top": nn.Conv2d(shapes[-1][0], c, 1),
            "smooth": nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(c), nn.ReLU(inplace=True)),
            "out": nn.Conv2d(c, 1, 1),
        })
        with torch.no_grad():  # start from a low fracture prior (Lin et al. 2017, focal loss)
            out = self.dense["out"]
            assert isinstance(out, nn.Conv2d) and out.bias is not None
            out.bias.fill_(-4.0)

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image logits (N x 2), fracture-map logits (N x h x w) and pooled features."""
        mid = self.features[: self.split](x)
        last = self.features[self.split :](mid)
        pooled = F.adaptive_avg_pool2d(last, 1).flatten(1)
        logits = self.classifier(pooled)
        top = F.interpolate(self.dense["top"](last), size=mid.shape[-2:], mode="nearest")
        fused = self.dense["lateral"](mid) + top
        fmap = self.dense["out"](self.dense["smooth"](fused))[:, 0]
        return logits, fmap, pooled

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image logits (N x 2) and fracture-map logits (N x h x w), h = w = ceil(side / 16)."""
        logits, fmap, _ = self.forward_all(x)
        return logits, fmap


def fracture_classifier(*, arch: str = ARCHITECTURE, width_mult: float = 1.0,
                        in_channels: int = 1, dropout: float = 0.2,
                        imagenet_weights: Path | None = None,
                        zero_init_residual: bool = False) -> FractureNet:
    """Stage 2 with the fracture head: :func:`abnormality_classifier` in a :class:`FractureNet`.

    ImageNet weights (``imagenet_weights``) initialise the trunk as before; the head starts
    fresh.
    """
    return FractureNet(abnormality_classifier(
        arch=arch, width_mult=width_mult, in_channels=in_channels, dropout=dropout,
        imagenet_weights=imagenet_weights, zero_init_residual=zero_init_residual))


def pooled_input(model: nn.Module, factor: int) -> nn.Module:
    """Prepend a ``factor`` x ``factor`` average pooling to a MobileNet's ``features``.

    Stage 1 needs less detail than stage 2: with a bundle's ``body_part_pool`` of 2, the body
    part is named from the 384 px input averaged down to 192 px, four times cheaper, and the
    pooling is part of the exported graph (both backends see the same network).
    """
    if factor == 1:
        return model
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        raise TypeError("model must be a torchvision MobileNet (features)")
    model.features = nn.Sequential(nn.AvgPool2d(factor), *features)
    return model
