"""MobileNetV2 builders for the two stages, and the module that routes images between them.

Stage 1 names the bone type (MURA's seven); stage 2 is one normal/abnormal classifier per bone
type, chosen by stage 1's prediction (El-Saadawy et al., AICV 2020). All networks are
torchvision's ``mobilenet_v2`` built with ``weights=None``; ImageNet initialisation comes only
from a local state-dict file the user names (torchvision's ``mobilenet_v2`` ImageNet weights,
``width_mult=1.0``). The first convolution takes ``in_channels`` (1 for grey radiographs): for
ImageNet weights its RGB kernels are summed, the usual grey-scale adaptation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torchvision.models import MobileNetV2
from torchvision.models import mobilenet_v2 as tv_mobilenet_v2
from torchvision.models.mobilenetv2 import InvertedResidual

from models.results import BONE_TYPES, check_bone_order

logger = logging.getLogger(__name__)

#: Name of the architecture, as recorded in bundle manifests.
ARCHITECTURE = "mobilenet_v2"


def _adapt_first_conv(model: MobileNetV2, in_channels: int, *, pretrained: bool) -> None:
    """Give the stem convolution ``in_channels`` inputs, summing pretrained RGB kernels."""
    stem = model.features[0][0]
    assert isinstance(stem, nn.Conv2d)
    if stem.in_channels == in_channels:
        return
    # torchvision's MobileNetV2 stem: 3x3, stride 2, padding 1, no bias
    conv = nn.Conv2d(in_channels, stem.out_channels, kernel_size=3, stride=2, padding=1,
                     bias=False)
    with torch.no_grad():
        if pretrained and in_channels == 1:
            conv.weight.copy_(stem.weight.sum(dim=1, keepdim=True))
        else:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out")
    model.features[0][0] = conv


def load_imagenet_weights(model: MobileNetV2, path: Path) -> None:
    """Load a local torchvision ``mobilenet_v2`` ImageNet state dict, except its classifier.

    Parameters
    ----------
    model : MobileNetV2
        A 3-channel model built with ``width_mult=1.0``.
    path : Path
        State-dict file (e.g. torchvision's ``mobilenet_v2-7ebf99e0.pth``).

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
            f"imagenet_weights {path} does not fit mobilenet_v2 (ImageNet weights need "
            f"width_mult=1.0): {exc}"
        ) from exc
    missing = [k for k in result.missing_keys if not k.startswith("classifier.")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"imagenet_weights {path} does not match mobilenet_v2: missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )
    logger.info("loaded ImageNet backbone weights from %s", path)


def mobilenet_v2(
    *,
    num_classes: int,
    width_mult: float = 1.0,
    in_channels: int = 1,
    dropout: float = 0.2,
    imagenet_weights: Path | None = None,
    zero_init_residual: bool = False,
) -> MobileNetV2:
    """torchvision MobileNetV2 with a ``num_classes`` head and an ``in_channels`` stem.

    Parameters
    ----------
    num_classes : int
        Outputs of the classifier head.
    width_mult : float
        Channel multiplier (must be 1.0 with ``imagenet_weights``).
    in_channels : int
        Input channels (1 for grey radiographs, or 3).
    dropout : float
        Dropout before the classifier head.
    imagenet_weights : Path, optional
        Local ImageNet state dict for the backbone; the head stays freshly initialised.
    zero_init_residual : bool
        Without ``imagenet_weights``, zero the last BatchNorm scale of every residual block so
        that each block starts as the identity (Goyal et al. 2017); training from scratch on
        small data is then much more stable.

    Returns
    -------
    torchvision.models.MobileNetV2
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not 0.0 < width_mult <= 4.0:
        raise ValueError(f"width_mult must be in (0, 4], got {width_mult}")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    if imagenet_weights is not None and width_mult != 1.0:
        raise ValueError(f"imagenet_weights need width_mult=1.0, got {width_mult}")
    model = tv_mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult,
                            dropout=dropout)
    if imagenet_weights is not None:
        load_imagenet_weights(model, imagenet_weights)
    elif zero_init_residual:
        for module in model.modules():
            if isinstance(module, InvertedResidual) and module.use_res_connect:
                last_bn = module.conv[-1]
                assert isinstance(last_bn, nn.BatchNorm2d)
                nn.init.zeros_(last_bn.weight)
    _adapt_first_conv(model, in_channels, pretrained=imagenet_weights is not None)
    return model


def bone_type_classifier(*, width_mult: float = 1.0, in_channels: int = 1,
                         imagenet_weights: Path | None = None,
                         zero_init_residual: bool = False) -> MobileNetV2:
    """Stage 1: MobileNetV2 that names the bone type (:data:`BONE_TYPES` order)."""
    return mobilenet_v2(num_classes=len(BONE_TYPES), width_mult=width_mult,
                        in_channels=in_channels, imagenet_weights=imagenet_weights,
                        zero_init_residual=zero_init_residual)


def abnormality_classifier(*, width_mult: float = 1.0, in_channels: int = 1,
                           imagenet_weights: Path | None = None,
                           zero_init_residual: bool = False) -> MobileNetV2:
    """Stage 2: MobileNetV2 for one bone type, class 0 = normal, class 1 = abnormal."""
    return mobilenet_v2(num_classes=2, width_mult=width_mult, in_channels=in_channels,
                        imagenet_weights=imagenet_weights,
                        zero_init_residual=zero_init_residual)


class TwoStageOutput(NamedTuple):
    """Output of :class:`TwoStageNetwork` for a batch of N images."""

    bone_probabilities: torch.Tensor  # N x len(bone_types), softmax
    bone_index: torch.Tensor  # N, argmax of bone_probabilities
    abnormal_probability: torch.Tensor  # N, from the head of the predicted bone type


class TwoStageNetwork(nn.Module):
    """Bone-type network plus one abnormality network per bone type, routed per image.

    Parameters
    ----------
    bone_type : torch.nn.Module
        Maps a batch to ``len(bone_types)`` logits.
    abnormal : mapping of str to torch.nn.Module
        One 2-logit network per bone type (class 1 = abnormal).
    bone_types : sequence of str
        Class order of ``bone_type``'s logits; every name needs a network in ``abnormal``.
    flip_tta : bool
        Test-time augmentation: average both stages' probabilities over the image and its
        mirror image (radiographs are routinely mirrored: left and right limbs).
    """

    def __init__(self, bone_type: nn.Module, abnormal: Mapping[str, nn.Module],
                 bone_types: Sequence[str] = BONE_TYPES, *, flip_tta: bool = False) -> None:
        super().__init__()
        bones = check_bone_order(bone_types)
        if set(abnormal) != set(bones):
            raise ValueError(
                f"abnormal must hold one network per bone type, got {sorted(abnormal)}"
            )
        self.bone_types = bones
        self.flip_tta = flip_tta
        self.bone_type = bone_type
        self.abnormal = nn.ModuleDict({name: abnormal[name] for name in self.bone_types})

    def _views(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, x.flip(-1)] if self.flip_tta else [x]

    def bone_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Stage-1 softmax (averaged over the mirrored views when ``flip_tta``)."""
        views = self._views(x)
        total = torch.softmax(self.bone_type(views[0]), dim=1)
        for view in views[1:]:
            total = total + torch.softmax(self.bone_type(view), dim=1)
        return total / len(views)

    def abnormal_probability(self, x: torch.Tensor, bone_index: torch.Tensor) -> torch.Tensor:
        """Abnormality probability of each image from the head of the given bone type."""
        out = x.new_zeros(x.shape[0])
        for i, name in enumerate(self.bone_types):
            mask = bone_index == i
            if bool(mask.any()):
                views = self._views(x[mask])
                head = self.abnormal[name]
                total = torch.softmax(head(views[0]), dim=1)[:, 1]
                for view in views[1:]:
                    total = total + torch.softmax(head(view), dim=1)[:, 1]
                out[mask] = (total / len(views)).to(out.dtype)
        return out

    def forward(self, x: torch.Tensor) -> TwoStageOutput:
        bone_probabilities = self.bone_probabilities(x)
        bone_index = bone_probabilities.argmax(dim=1)
        return TwoStageOutput(bone_probabilities, bone_index,
                              self.abnormal_probability(x, bone_index))

    def predict(self, images: torch.Tensor, *, batch_size: int,
                device: torch.device) -> TwoStageOutput:
        """Run both stages in eval and inference mode, ``batch_size`` images at a time.

        Parameters
        ----------
        images : torch.Tensor
            Preprocessed inputs (N x C x S x S, any float dtype), on any device.
        batch_size : int
            Images per forward pass.
        device : torch.device
            Device the network is on; each batch is moved there as float32.

        Returns
        -------
        TwoStageOutput
            On the CPU, in input order.
        """
        self.eval()
        outputs = []
        with torch.inference_mode():
            for start in range(0, images.shape[0], batch_size):
                chunk = images[start : start + batch_size].to(device, torch.float32)
                outputs.append(self(chunk))
        return TwoStageOutput(*(torch.cat([o[i] for o in outputs]).cpu() for i in range(3)))


def two_stage_mobilenet_v2(*, width_mult: float = 1.0, in_channels: int = 1,
                           bone_types: Sequence[str] = BONE_TYPES,
                           flip_tta: bool = False) -> TwoStageNetwork:
    """Untrained :class:`TwoStageNetwork` of MobileNetV2s (the shape a bundle loads into)."""
    return TwoStageNetwork(
        bone_type_classifier(width_mult=width_mult, in_channels=in_channels),
        {b: abnormality_classifier(width_mult=width_mult, in_channels=in_channels)
         for b in bone_types},
        bone_types,
        flip_tta=flip_tta,
    )
