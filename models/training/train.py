"""Train a two-stage bundle (torchvision reference-script style).

The classes are those of :data:`~models.serving.taxonomy.MURA_TAXONOMY` present in the train split:
MURA's seven bone types (assessed) and, where the data has it, ``OTHER`` (out-of-scope
anatomy: recognised by stage 1, never assessed). Networks trained, in order, on the train split:

1. stage 1, the body-part MobileNet, on every train image (``len(taxonomy)`` outputs);
2. a shared normal/abnormal MobileNet on every train image of an *assessed* class
   (``--shared-epochs``; 0 skips it), whose weights initialise every stage-2 network: without
   ImageNet weights this stands in for the paper's ImageNet initialisation, and each class
   profits from the others' findings;
3. stage 2, one normal/abnormal MobileNet per assessed class, fine-tuned on that class's train
   images (``--abnormal-epochs``, ``--finetune-lr``). Labels are the studies' labels, as in MURA.

The abnormality networks use MURA's class weighting (Rajpurkar et al. 2017): the cross-entropy
of an abnormal image is weighted by ``N_normal / N`` and that of a normal image by
``N_abnormal / N``, counted over the network's own training images.

Nothing is selected on the validation split here: after training, :mod:`models.training.calibrate`
chooses thresholds, evaluates on valid and writes the bundle. Images are preprocessed once
(:func:`models.serving.enhance.preprocess`) and kept in memory as float16; batches are augmented on
the
fly (mirroring and a small random rotation, zoom and shift). Without ImageNet weights, networks
start with zero-initialised residual branches, which makes training from scratch stable;
training runs channels-last, markedly faster for depthwise convolutions on CPU. On CUDA it
runs in mixed precision (bfloat16 where supported, else float16 with gradient scaling).

Training is resumable: after every epoch a checkpoint goes to ``--checkpoint-dir`` (default
``<out>.checkpoints``); ``--resume`` continues from the last one and ends with the same weights,
bit for bit, as an uninterrupted run with the same options (on the same device and threads).

Example::

    ossa train --data var/phantom --out var/bundles/demo --preset demo --seed 0
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
import torchvision
from torch import nn
from tqdm import tqdm

from models.datasets.data import load_boxes, load_studies, load_taxonomy
from models.serving.enhance import Preprocessing
from models.serving.taxonomy import MURA_TAXONOMY, Taxonomy
from models.training.bank import ImageBank, MuraImageDataset
from models.training.calibrate import parse_threshold_rule
from models.training.networks import (
    ARCHITECTURE,
    ARCHITECTURES,
    MAP_STRIDE,
    body_part_classifier,
    fracture_classifier,
    pooled_input,
)
from models.training.two_stage import TwoStageNetwork

logger = logging.getLogger(__name__)

#: Option defaults filled in by ``--preset``; explicit flags override them.
PRESETS: Mapping[str, Mapping[str, Any]] = {
    # `ossa phantom --studies 80 --seed 0` + this preset: about 3.5 minutes on 2 CPU cores.
    "demo": {
        "arch": ARCHITECTURE, "input_size": 96, "width_mult": 0.5, "epochs": 12,
        "shared_epochs": 24, "abnormal_epochs": 6, "batch_size": 32, "lr": 5e-3,
        "finetune_lr": 1e-3, "weight_decay": 1e-4, "label_smoothing": 0.0, "clip_limit": 0.01,
        "kernel_size": 48, "augment": True, "body_part_pool": 1, "crop_foreground": False,
        "photometric": False, "ema": False, "dense_weight": 1.0, "abnormal_batch_size": 32,
        "shared_scope": "assessed",
    },
    # The tests' phantom (80 studies per bone type, 160-320 px images), once per test session
    # (about 4 minutes on 2 CPU cores; 7.5 with the earlier 12/20/6 epochs, for the same study
    # accuracy and kappa on the phantom's valid split). Smaller phantoms fall short of the
    # tests' accuracy bar.
    "test": {
        "arch": ARCHITECTURE, "input_size": 96, "width_mult": 0.5, "epochs": 6,
        "shared_epochs": 8, "abnormal_epochs": 4, "batch_size": 32, "lr": 5e-3,
        "finetune_lr": 1e-3, "weight_decay": 1e-4, "label_smoothing": 0.0, "clip_limit": 0.01,
        "kernel_size": 48, "augment": True, "body_part_pool": 1, "crop_foreground": False,
        "photometric": False, "ema": False, "dense_weight": 1.0, "abnormal_batch_size": 32,
        "shared_scope": "assessed",
    },
    # The paper's setting on MURA-v1.1 (El-Saadawy et al. 2020): ImageNet-initialised
    # MobileNetV2 at 224 px and width 1.0 (give --imagenet-weights), stage 1 at full
    # resolution, each per-class network from ImageNet (no shared network).
    "mura": {
        "arch": ARCHITECTURE, "input_size": 224, "width_mult": 1.0, "epochs": 10,
        "shared_epochs": 0, "abnormal_epochs": 10, "batch_size": 32, "lr": 1e-3,
        "finetune_lr": 1e-3, "weight_decay": 1e-4, "label_smoothing": 0.0, "clip_limit": 0.01,
        "kernel_size": 56, "augment": True, "body_part_pool": 1, "crop_foreground": False,
        "photometric": False, "ema": True, "dense_weight": 1.0, "abnormal_batch_size": 32,
        "shared_scope": "assessed", "normal_ratio": None,
    },
    # Real radiographs (`ossa data import-fracatlas`): the shipped bundles/fracatlas. 384 px
    # after the foreground crop, so that a fracture spans a few map cells (FracAtlas's median
    # box is 27 px on ~450 px films); stage 1 sees it pooled to 192 px. Width 0.5 so that the
    # networks fit the 25 MB bundle budget; stage 2 in batches of 8, the fastest per image on
    # 2 CPU cores at this size. The fracture network is pretrained on every region's films.
    "real": {
        "arch": ARCHITECTURE, "input_size": 384, "width_mult": 0.5, "epochs": 12,
        "shared_epochs": 20, "abnormal_epochs": 12, "batch_size": 32, "lr": 2e-3,
        "finetune_lr": 5e-4, "weight_decay": 1e-4, "label_smoothing": 0.0, "clip_limit": 0.01,
        "kernel_size": 96, "augment": True, "body_part_pool": 2, "crop_foreground": True,
        "photometric": True, "ema": True, "dense_weight": 1.0, "abnormal_batch_size": 8,
        "shared_scope": "all", "normal_ratio": 1.5,
    },
}

#: Options that determine the trained weights: a checkpoint resumes only with the same values.
_RESUME_KEYS: tuple[str, ...] = (
    "data", "seed", "deterministic", "arch", "imagenet_weights", "epochs", "shared_epochs",
    "abnormal_epochs", "input_size", "width_mult", "batch_size", "lr", "finetune_lr",
    "weight_decay", "label_smoothing", "clip_limit", "kernel_size", "augment", "amp",
    "body_part_pool", "crop_foreground", "photometric", "ema", "dense_weight",
    "abnormal_batch_size", "shared_scope", "normal_ratio",
)

#: Format tag of the checkpoint files.
CHECKPOINT_FORMAT = "ossa-train-checkpoint/1"

#: Per-epoch state of the network in training, as :func:`train_network` saves and resumes it.
EpochState = dict[str, Any]


@dataclass(frozen=True)
class TrainingOptions:
    """Optimisation options of one network.

    Parameters
    ----------
    epochs : int
        Passes over the network's training images.
    batch_size : int
        Images per step (at least 2, for BatchNorm).
    lr : float
        Peak learning rate of the one-cycle schedule (AdamW).
    weight_decay : float
        AdamW weight decay.
    label_smoothing : float
        Cross-entropy label smoothing in [0, 1).
    augment : bool
        Random mirroring and affine transform of each batch.
    photometric : bool
        Also a random gamma and contrast change of each image (with ``augment``).
    ema : bool
        Keep an exponential moving average of the weights (and BatchNorm statistics) and end
        with it; its horizon is a tenth of the run's steps.
    dense_weight : float
        Weight of the fracture-map loss beside the image loss (networks with a fracture head,
        trained with boxes).
    normal_ratio : float, optional
        Each epoch takes every abnormal image and this many times as many normal ones, drawn
        afresh (binary targets only): rare findings are seen every epoch without a pass over
        every normal film. None: every image every epoch.
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    augment: bool = True
    photometric: bool = False
    ema: bool = False
    dense_weight: float = 1.0
    normal_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not self.dense_weight >= 0:
            raise ValueError(f"dense_weight must be >= 0, got {self.dense_weight}")
        if self.normal_ratio is not None and not self.normal_ratio > 0:
            raise ValueError(f"normal_ratio must be > 0, got {self.normal_ratio}")


def mura_class_weights(labels: torch.Tensor) -> torch.Tensor:
    """MURA's class weights ``[w_normal, w_abnormal]`` for binary ``labels`` (1 = abnormal).

    ``w_abnormal = N_normal / N`` and ``w_normal = N_abnormal / N`` (Rajpurkar et al. 2017),
    so that the rarer class weighs more.

    Parameters
    ----------
    labels : torch.Tensor
        The training labels of one network (0 or 1).

    Raises
    ------
    ValueError
        When one of the two classes has no image (its weight would be zero).
    """
    n = int(labels.numel())
    abnormal = int((labels == 1).sum())
    normal = int((labels == 0).sum())
    if normal + abnormal != n:
        raise ValueError("labels must be 0 or 1")
    if normal == 0 or abnormal == 0:
        raise ValueError(f"needs both normal and abnormal images, got {normal} normal and "
                         f"{abnormal} abnormal")
    return torch.tensor([abnormal / n, normal / n], dtype=torch.float32)


def augment_batch(images: torch.Tensor, generator: torch.Generator, *,
                  fill: float | torch.Tensor,
                  max_rotation: float = 15.0, max_scale: float = 0.1,
                  max_shift: float = 0.08) -> torch.Tensor:
    """Random mirror and small affine transform of a batch (N x C x S x S).

    Parameters
    ----------
    images : torch.Tensor
        Normalized batch.
    generator : torch.Generator
        Source of randomness (seeded by the caller).
    fill : float or torch.Tensor
        Value outside the transformed image (the normalized black background), or one per
        channel (1 x C x 1 x 1) when target maps ride along as extra channels.
    max_rotation : float
        Largest rotation in degrees.
    max_scale : float
        Largest relative zoom in or out.
    max_shift : float
        Largest shift as a fraction of the image side.
    """
    n = images.shape[0]

    def uniform(size: int) -> torch.Tensor:
        return torch.rand(size, generator=generator) * 2.0 - 1.0

    flip = torch.rand(n, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    angle = uniform(n) * math.radians(max_rotation)
    scale = 1.0 + uniform(n) * max_scale
    shift = torch.stack([uniform(n), uniform(n)], dim=1) * max_shift * 2.0
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    ).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return out + fill


def photometric_batch(images: torch.Tensor, generator: torch.Generator, *, mean: float,
                      std: float, max_gamma: float = 0.3, max_contrast: float = 0.2
                      ) -> torch.Tensor:
    """Random gamma (``x ** g``, log g uniform in +-``max_gamma``) and contrast (about the
    image mean, x 1 +- ``max_contrast``) of normalized images, exposure differences between
    films; black stays black."""
    n = images.shape[0]
    log_gamma = (torch.rand(n, generator=generator) * 2 - 1) * max_gamma
    contrast = 1.0 + (torch.rand(n, generator=generator) * 2 - 1) * max_contrast
    x = (images * std + mean).clamp(0.0, 1.0) ** torch.exp(log_gamma)[:, None, None, None]
    centre = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - centre) * contrast[:, None, None, None] + centre).clamp(0.0, 1.0)
    return (x - mean) / std


def box_masks(boxes: Sequence[torch.Tensor], annotated: torch.Tensor, labels: torch.Tensor,
              size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input-resolution targets of the fracture head: (positive, weight), each N x 1 x S x S.

    ``positive`` is 1 inside an image's boxes. ``weight`` says which pixels train the map:
    every pixel of a normal image (label 0; it has no fracture anywhere), the boxes of an
    annotated fractured image (the rest of it is ignored: an annotator may have boxed one
    fracture of several), nothing of an unannotated fractured image.
    """
    n = len(boxes)
    positive = torch.zeros(n, 1, size, size)
    weight = torch.zeros(n, 1, size, size)
    for i, image_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in image_boxes.tolist():
            c0, r0 = max(math.floor(x0), 0), max(math.floor(y0), 0)
            c1, r1 = min(math.ceil(x1), size), min(math.ceil(y1), size)
            positive[i, 0, r0:r1, c0:c1] = 1.0
        if int(labels[i]) == 0:
            weight[i] = 1.0
        elif bool(annotated[i]):
            weight[i] = positive[i]
    return positive, weight


def dense_loss(fmap: torch.Tensor, positive: torch.Tensor, weight: torch.Tensor, *,
               stride: int) -> torch.Tensor:
    """Balanced binary cross-entropy of the fracture map against pixel targets.

    A cell is positive when a box touches its centre half (max-pooled positive > 0.5) and
    trains when its weight does; positive and negative cells each contribute their mean, so
    that a few fracture cells weigh as much as a film of normal ones.
    """
    cell_pos = (F.max_pool2d(positive, stride) > 0.5)[:, 0].float()
    cell_w = (F.max_pool2d(weight, stride) > 0.5)[:, 0].float()
    bce = F.binary_cross_entropy_with_logits(fmap.float(), cell_pos, reduction="none")
    pos, neg = cell_pos * cell_w, (1 - cell_pos) * cell_w
    loss = fmap.new_zeros((), dtype=torch.float32)
    if pos.sum() > 0:
        loss = loss + (bce * pos).sum() / pos.sum()
    if neg.sum() > 0:
        loss = loss + (bce * neg).sum() / neg.sum()
    return loss


def resolve_device(spec: str) -> torch.device:
    """``"auto"`` (a GPU when one is present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises
    ------
    ValueError
        On another name, or CUDA asked for where none is available.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}") from exc
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r}: CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA devices")
    return device


def amp_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """Mixed-precision dtype on ``device``: bfloat16 or float16 on CUDA, None (float32) else."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def train_network(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    options: TrainingOptions,
    *,
    generator: torch.Generator,
    fill: float,
    device: torch.device,
    name: str,
    class_weights: torch.Tensor | None = None,
    autocast_dtype: torch.dtype | None = None,
    resume: Mapping[str, Any] | None = None,
    on_epoch: Callable[[EpochState], None] | None = None,
    boxes: Sequence[torch.Tensor] | None = None,
    annotated: torch.Tensor | None = None,
    normalization: tuple[float, float] = (0.449, 0.226),
) -> list[dict[str, float]]:
    """Train ``model`` on in-memory ``images`` with AdamW and a one-cycle schedule.

    Parameters
    ----------
    model : torch.nn.Module
        Network mapping a batch to class logits; left in eval mode, on ``device``.
    images : torch.Tensor
        Preprocessed images (N x C x S x S, any float dtype), on the CPU.
    targets : torch.Tensor
        Class indices (N).
    options : TrainingOptions
        Optimisation options.
    generator : torch.Generator
        Seeded CPU generator for batch order and augmentation.
    fill : float
        Normalized background value (augmentation padding).
    device : torch.device
        Device to train on.
    name : str
        Network name for the log and the progress bar.
    class_weights : torch.Tensor, optional
        Per-class weight of each image's cross-entropy (the loss is their batch mean).
    autocast_dtype : torch.dtype, optional
        Mixed precision on CUDA (:func:`amp_dtype`); float16 also scales the gradients.
    resume : mapping, optional
        A state passed to ``on_epoch`` by an earlier run with the same arguments: training
        continues after its epoch, with the same result as if it had never stopped.
    on_epoch : callable, optional
        Called after every epoch with the complete state (model, optimizer, scheduler, gradient
        scaler, ``generator``'s and torch's global random states, weight average, history) to
        checkpoint.
    boxes : sequence of torch.Tensor, optional
        Each image's finding boxes in input pixels (K x 4): with a model that returns
        ``(logits, map)`` (:class:`~models.training.networks.FractureNet`), the map is trained on
        them
        (:func:`box_masks`, :func:`dense_loss`) beside the image loss.
    annotated : torch.Tensor, optional
        Bool per image: whether its boxes are all its findings (with ``boxes``).
    normalization : tuple of float
        The inputs' (mean, std), for the photometric augmentation.

    Returns
    -------
    list of dict
        Per-epoch ``epoch``, ``loss``, ``accuracy`` (on augmented batches), ``seconds`` and
        ``images_per_second``.
    """
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"{name}: needs at least 2 training images, got {n}")
    abnormal_rows = torch.nonzero(targets == 1).flatten()
    normal_rows = torch.nonzero(targets == 0).flatten()
    per_epoch = n
    if options.normal_ratio is not None:
        if len(abnormal_rows) + len(normal_rows) != n:
            raise ValueError(f"{name}: normal_ratio needs binary targets")
        normals = min(len(normal_rows), round(options.normal_ratio * len(abnormal_rows)))
        per_epoch = len(abnormal_rows) + normals
    batch_size = min(options.batch_size, per_epoch)
    steps_per_epoch = per_epoch // batch_size
    # channels-last runs MobileNet's depthwise convolutions markedly faster on CPU
    model.to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr,
                                  weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=options.lr, total_steps=options.epochs * steps_per_epoch,
        pct_start=0.25,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    weight = class_weights.to(device) if class_weights is not None else None
    history: list[dict[str, float]] = []
    ema = ({k: v.detach().clone() for k, v in model.state_dict().items()} if options.ema
           else None)
    ema_decay = 1.0 - 1.0 / max(10.0, 0.1 * options.epochs * steps_per_epoch)
    dense = boxes is not None and annotated is not None
    if dense and len(boxes or ()) != n:
        raise ValueError(f"{name}: boxes must hold one entry per image ({n})")
    stride = MAP_STRIDE
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if resume["scaler"]:
            scaler.load_state_dict(resume["scaler"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        if resume["cuda_rng"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state_all(resume["cuda_rng"])
        history = [dict(record) for record in resume["history"]]
        if ema is not None:
            ema = {k: v.to(device) for k, v in resume["ema"].items()}
    progress = tqdm(total=options.epochs * steps_per_epoch * batch_size,
                    initial=len(history) * steps_per_epoch * batch_size, desc=name, unit="img",
                    file=sys.stderr, disable=None, leave=False, dynamic_ncols=True)
    try:
        for epoch in range(len(history) + 1, options.epochs + 1):
            start = time.perf_counter()
            if options.normal_ratio is None:
                order = torch.randperm(n, generator=generator)
            else:
                drawn = normal_rows[torch.randperm(len(normal_rows), generator=generator)]
                epoch_rows = torch.cat([abnormal_rows, drawn[: per_epoch - len(abnormal_rows)]])
                order = epoch_rows[torch.randperm(per_epoch, generator=generator)]
            total_loss, total_dense, correct, seen = 0.0, 0.0, 0, 0
            for step in range(steps_per_epoch):
                index = order[step * batch_size : (step + 1) * batch_size]
                x = images[index].float()
                size = x.shape[-1]
                if options.augment and options.photometric:
                    x = photometric_batch(x, generator, mean=normalization[0],
                                          std=normalization[1])
                masks = None
                if dense:
                    assert boxes is not None and annotated is not None
                    positive, mask_weight = box_masks([boxes[int(i)] for i in index],
                                                      annotated[index], targets[index], size)
                    x = torch.cat([x, positive, mask_weight], dim=1)
                if options.augment:
                    channel_fill = torch.zeros(1, x.shape[1], 1, 1)
                    channel_fill[:, : x.shape[1] - (2 if dense else 0)] = fill
                    x = augment_batch(x, generator, fill=channel_fill if dense else fill)
                if dense:
                    masks = (x[:, -2:-1].to(device), x[:, -1:].to(device))
                    x = x[:, :-2]
                x = x.to(device).contiguous(memory_format=torch.channels_last)
                y = targets[index].to(device)
                with torch.autocast(device.type, dtype=autocast_dtype,
                                    enabled=autocast_dtype is not None):
                    out = model(x)
                logits, fmap = out if isinstance(out, tuple) else (out, None)
                # the loss in float32; with weights, MURA's mean of weighted cross-entropies
                loss = F.cross_entropy(logits.float(), y, weight=weight, reduction="none",
                                       label_smoothing=options.label_smoothing).mean()
                if masks is not None and fmap is not None:
                    map_loss = dense_loss(fmap, *masks, stride=stride)
                    loss = loss + options.dense_weight * map_loss
                    total_dense += float(map_loss.detach()) * len(index)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if ema is not None:
                    _update_average(ema, model, ema_decay)
                total_loss += float(loss.detach()) * len(index)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(index)
                progress.update(len(index))
                progress.set_postfix(epoch=f"{epoch}/{options.epochs}",
                                     loss=f"{total_loss / seen:.4f}", refresh=False)
            seconds = time.perf_counter() - start
            record = {"epoch": epoch, "loss": total_loss / seen, "accuracy": correct / seen,
                      "seconds": seconds, "images_per_second": seen / max(seconds, 1e-9)}
            if dense:
                record["dense_loss"] = total_dense / seen
            history.append(record)
            logger.info("%s epoch %d/%d loss %.4f acc %.3f %.0f img/s (%.1fs)", name, epoch,
                        options.epochs, record["loss"], record["accuracy"],
                        record["images_per_second"], seconds)
            if on_epoch is not None:
                on_epoch({
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": (torch.cuda.get_rng_state_all() if device.type == "cuda"
                                 else None),
                    "ema": ema,
                    "history": [dict(r) for r in history],
                })
    finally:
        progress.close()
    if ema is not None:
        model.load_state_dict(ema)
    model.to(memory_format=torch.contiguous_format).eval()
    return history


def _update_average(average: dict[str, torch.Tensor], model: nn.Module, decay: float) -> None:
    """One step of the exponential moving average of ``model``'s state (integer buffers,
    such as BatchNorm's batch count, are copied)."""
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                average[key].mul_(decay).add_(value.detach(), alpha=1.0 - decay)
            else:
                average[key].copy_(value)


class CheckpointDir:
    """Per-epoch training checkpoints in one directory, the newest kept.

    Parameters
    ----------
    path : Path
        The directory (created on the first save).

    A checkpoint is ``<position>-<network>-epoch<epoch>.pt`` (``position``: the network's
    place in the training order, both zero-padded, so that names sort in training order),
    written atomically (temporary file, fsync, rename, fsync of the directory). It holds a
    dict: ``format`` (:data:`CHECKPOINT_FORMAT`), ``fingerprint`` (the options it resumes
    with), ``position``, ``network``, ``epoch``, ``current`` (the state of the network in
    training, see :func:`train_network`) and ``finished`` (name to ``model`` state dict and
    ``history`` of every network trained before it).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def files(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.glob("*.pt") if not p.name.startswith("."))

    def exists(self) -> bool:
        """Whether the directory exists and holds anything."""
        return self.path.is_dir() and any(self.path.iterdir())

    def save(self, checkpoint: Mapping[str, Any]) -> Path:
        """Write ``checkpoint`` atomically and delete the older ones; returns its path."""
        self.path.mkdir(parents=True, exist_ok=True)
        name = (f"{checkpoint['position']:02d}-{checkpoint['network']}-"
                f"epoch{checkpoint['epoch']:04d}.pt")
        final = self.path / name
        tmp = self.path / f".{name}.tmp"
        with open(tmp, "wb") as f:
            torch.save(dict(checkpoint), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.path)
        for old in self.files():
            if old != final:
                old.unlink(missing_ok=True)
        return final

    def latest(self) -> dict[str, Any] | None:
        """The newest checkpoint, or None when there is none.

        Raises
        ------
        ValueError
            When the newest file is not a checkpoint of this format.
        """
        files = self.files()
        if not files:
            return None
        path = files[-1]
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a damaged file
            raise ValueError(f"{path} is not a readable checkpoint: {exc}") from exc
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not an {CHECKPOINT_FORMAT} checkpoint")
        logger.info("resuming from %s", path)
        return checkpoint

    def clear(self) -> None:
        """Delete the directory and everything in it."""
        shutil.rmtree(self.path, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line options of ``ossa train``."""
    parser = argparse.ArgumentParser(
        description="Train a two-stage MobileNet bundle (body part, then per-class abnormality) "
                    "on MURA-v1.1 or the phantom.",
        add_help=add_help,
    )
    parser.add_argument("--data", type=Path, required=True,
                        help="MURA-v1.1 directory or the directory containing it")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                        help="fills the defaults of the options below (default: demo)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                        help="torch.use_deterministic_algorithms, no cuDNN benchmarking "
                             "(default: on)")
    parser.add_argument("--arch", choices=ARCHITECTURES, default=None,
                        help=f"network architecture (preset default: {ARCHITECTURE})")
    parser.add_argument("--imagenet-weights", type=Path, default=None,
                        help="local torchvision ImageNet state dict of --arch to start from "
                             "(needs --width-mult 1.0); nothing is downloaded")
    parser.add_argument("--epochs", type=int, default=None, help="body-part network epochs")
    parser.add_argument("--shared-epochs", type=int, default=None,
                        help="epochs of the shared abnormality network that initialises the "
                             "per-class networks (0: start them from ImageNet or scratch)")
    parser.add_argument("--abnormal-epochs", type=int, default=None,
                        help="epochs of each per-class abnormality network")
    parser.add_argument("--input-size", type=int, default=None, help="network input side (px)")
    parser.add_argument("--width-mult", type=float, default=None, help="MobileNet width")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None,
                        help="peak one-cycle learning rate (body-part and shared networks)")
    parser.add_argument("--finetune-lr", type=float, default=None,
                        help="peak learning rate of the per-class networks")
    parser.add_argument("--weight-decay", type=float, default=None)
    parser.add_argument("--label-smoothing", type=float, default=None)
    parser.add_argument("--clip-limit", type=float, default=None, help="CLAHE clip limit")
    parser.add_argument("--kernel-size", type=int, default=None, help="CLAHE tile size (px)")
    parser.add_argument("--abnormal-batch-size", type=int, default=None,
                        help="batch size of the stage-2 (fracture) networks")
    parser.add_argument("--body-part-pool", type=int, choices=(1, 2, 4), default=None,
                        help="average pooling at the start of the stage-1 network")
    parser.add_argument("--crop-foreground", action=argparse.BooleanOptionalAction,
                        default=None, help="crop each image to its exposed field first")
    parser.add_argument("--photometric", action=argparse.BooleanOptionalAction, default=None,
                        help="random gamma and contrast in the augmentation")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                        help="end each network with its exponential moving average weights")
    parser.add_argument("--dense-weight", type=float, default=None,
                        help="weight of the fracture-map loss (datasets with boxes)")
    parser.add_argument("--shared-scope", choices=("assessed", "all"), default=None,
                        help="images of the shared fracture network: the assessed classes', "
                             "or every class's (fractures of every region)")
    parser.add_argument("--normal-ratio", type=float, default=None,
                        help="stage-2 epochs take every abnormal image and this many times as "
                             "many normal ones, drawn afresh each epoch (default: preset's; "
                             "none in the demo and test presets)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="mirror + random affine augmentation")
    parser.add_argument("--flip-tta", action=argparse.BooleanOptionalAction, default=True,
                        help="average predictions over each image and its mirror (default: on)")
    parser.add_argument("--min-auroc", type=float, default=0.6,
                        help="an assessed class whose stage-2 network has a lower study-level "
                             "AUROC on the valid split is not assessed (default: 0.6)")
    parser.add_argument("--min-positives", type=int, default=5,
                        help="an assessed class with fewer abnormal or normal valid studies "
                             "is not assessed (default: 5)")
    parser.add_argument("--threshold", type=parse_threshold_rule, default="youden",
                        help="rule for each assessed class's operating threshold, chosen on "
                             "the valid split: youden, sensitivity=S, or a fixed number such "
                             "as 0.5 (default: youden)")
    parser.add_argument("--name", default=None, help="bundle name (default: --out's name)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing bundle, and discard the checkpoints of an "
                             "interrupted run unless --resume")
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="per-epoch checkpoints (default: <out>.checkpoints); deleted "
                             "once the bundle is written")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from its last checkpoint (same "
                             "options; the result is the same as without interruption)")
    parser.add_argument("--workers", type=int, default=0,
                        help="threads for image preprocessing (default: 0)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: os.cpu_count())")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda or cuda:N (default: auto, a GPU when present)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="mixed precision on CUDA: bfloat16 where supported, else float16 "
                             "with gradient scaling (default: on; no effect on CPU)")
    return parser


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Copy of ``args`` with every option left unset filled from its preset."""
    if args.preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {args.preset!r}")
    resolved = argparse.Namespace(**vars(args))
    preset = PRESETS[args.preset]
    if getattr(args, "input_size", None) is not None and getattr(args, "kernel_size",
                                                                 None) is None:
        # CLAHE tiles scale with the input: the same share of the image
        resolved.kernel_size = max(2, round(preset["kernel_size"] * args.input_size
                                            / preset["input_size"]))
    for key, value in preset.items():
        if getattr(resolved, key, None) is None:
            setattr(resolved, key, value)
    if resolved.threads is None:
        resolved.threads = os.cpu_count() or 1
    return resolved


def command_line(args: argparse.Namespace) -> list[str]:
    """Equivalent ``ossa train`` command with every option explicit."""
    argv = ["ossa", "train"]
    for action in get_args_parser()._actions:  # argparse has no public iterator
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest, None)
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(flag if value else f"--no-{flag[2:]}")
        elif action.nargs == 0:  # store_true
            if value:
                argv.append(flag)
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def checkpoint_dir(args: argparse.Namespace) -> Path:
    """``--checkpoint-dir``, by default ``<out>.checkpoints`` beside the bundle."""
    if args.checkpoint_dir is not None:
        return Path(args.checkpoint_dir)
    out = Path(args.out)
    return out.with_name(out.name + ".checkpoints")


def _seeded(seed: int) -> torch.Generator:
    """Seed torch's global generator (weight init, dropout) and return one for the data."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def main(args: argparse.Namespace) -> int:
    """Train, calibrate on valid and write the bundle described by ``args``; returns 0."""
    args = resolve_args(args)
    device = resolve_device(args.device)
    cudnn = torch.backends.cudnn
    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(), cudnn.benchmark,
                cudnn.deterministic)
    if device.type == "cuda" and args.deterministic:
        # cuBLAS is deterministic only with a fixed workspace (read when CUDA starts)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(args.threads)
    # on CUDA a few backward kernels have no deterministic version: warn instead of failing
    torch.use_deterministic_algorithms(args.deterministic, warn_only=device.type == "cuda")
    cudnn.benchmark = device.type == "cuda" and not args.deterministic
    cudnn.deterministic = args.deterministic
    try:
        _run(args, device)
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1], warn_only=previous[2])
        cudnn.benchmark, cudnn.deterministic = previous[3], previous[4]
    return 0


def _check_args(args: argparse.Namespace) -> None:
    parse_threshold_rule(str(args.threshold))
    for key in ("epochs", "abnormal_epochs"):
        if getattr(args, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(args, key)}")
    if args.shared_epochs < 0:
        raise ValueError(f"shared_epochs must be >= 0, got {args.shared_epochs}")
    if args.arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {args.arch!r}")


def _fingerprint(args: argparse.Namespace, taxonomy: Taxonomy, train: ImageBank) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed: options, classes and training data."""
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
               if k in _RESUME_KEYS}
    return {"options": options, "classes": list(taxonomy.names),
            "train_images": int(train.labels.numel()),
            "train_abnormal": int(train.labels.sum())}


@dataclass(frozen=True)
class _Job:
    """One network to train: which, on which images, with which seed and options."""

    name: str
    seed: int
    select: torch.Tensor  # bool mask over the train bank
    targets: torch.Tensor  # over the train bank
    options: TrainingOptions
    class_weights: torch.Tensor | None
    dense: bool = False  # train the fracture map on the boxes


def _run(args: argparse.Namespace, device: torch.device) -> None:
    started = time.perf_counter()
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise FileExistsError(f"a bundle already exists in {out} (use --overwrite)")
    _check_args(args)
    store = CheckpointDir(checkpoint_dir(args))
    if store.exists() and not args.resume:
        if not args.overwrite:
            raise FileExistsError(
                f"{store.path} holds the checkpoints of an interrupted run: continue it with "
                f"--resume, or start over with --overwrite")
        logger.info("discarding the checkpoints in %s (--overwrite)", store.path)
        store.clear()
    checkpoint = store.latest() if args.resume else None
    if args.resume and checkpoint is None:
        logger.info("no checkpoint in %s: training from the start", store.path)

    preprocessing = Preprocessing(input_size=args.input_size, clip_limit=args.clip_limit,
                                  kernel_size=args.kernel_size,
                                  crop_foreground=args.crop_foreground)
    if args.input_size % args.body_part_pool:
        raise ValueError(f"input_size must be a multiple of body_part_pool "
                         f"{args.body_part_pool}, got {args.input_size}")
    build = {"arch": args.arch, "width_mult": args.width_mult,
             "in_channels": preprocessing.channels, "imagenet_weights": args.imagenet_weights,
             "zero_init_residual": True}
    autocast = amp_dtype(device, args.amp)

    def options(epochs: int, lr: float, batch_size: int | None = None,
                binary: bool = False) -> TrainingOptions:
        return TrainingOptions(epochs=epochs, batch_size=batch_size or args.batch_size, lr=lr,
                               weight_decay=args.weight_decay,
                               label_smoothing=args.label_smoothing, augment=args.augment,
                               photometric=args.photometric, ema=args.ema,
                               dense_weight=args.dense_weight,
                               normal_ratio=None if binary is False else args.normal_ratio)

    train_studies = load_studies(args.data, "train")
    valid_studies = load_studies(args.data, "valid")
    present = {s.body_part for s in train_studies}
    # a labelled dataset names its classes and codes (taxonomy.json); MURA's are the paper's
    base = load_taxonomy(args.data) or MURA_TAXONOMY
    taxonomy = Taxonomy.from_names([n for n in base.names if n in present], base)
    loaded = load_boxes(args.data)
    boxes = loaded[0] if loaded is not None else {}
    t0 = time.perf_counter()
    train = MuraImageDataset(train_studies, preprocessing, taxonomy,
                             boxes=boxes).bank(workers=args.workers)
    valid = MuraImageDataset(valid_studies, preprocessing, taxonomy,
                             boxes=boxes).bank(workers=args.workers)
    logger.info("preprocessed %d train and %d valid images in %.1fs (classes %s); %d train "
                "images annotated with %d boxes", len(train.labels), len(valid.labels),
                time.perf_counter() - t0, ", ".join(taxonomy.names),
                int(train.annotated.sum()) if train.annotated is not None else 0,
                sum(len(b) for b in train.boxes))
    counts = {name: int((train.classes == i).sum()) for i, name in enumerate(taxonomy.names)}
    for name, count in counts.items():
        if count < 2:
            raise ValueError(f"the train split needs at least 2 images of {name}, got {count}")

    fingerprint = _fingerprint(args, taxonomy, train)
    if checkpoint is not None and checkpoint["fingerprint"] != fingerprint:
        old, new = checkpoint["fingerprint"], fingerprint
        differ = sorted({k for k in set(old["options"]) | set(new["options"])
                         if old["options"].get(k) != new["options"].get(k)}
                        | {k for k in ("classes", "train_images", "train_abnormal")
                           if old.get(k) != new.get(k)})
        raise ValueError(f"cannot --resume from {store.path}: the checkpoint was made with "
                         f"other options or data ({', '.join(differ)}); use --overwrite to "
                         f"start over")

    # one seed per network, so that each is reproducible on its own; per-class seeds follow
    # the dataset's class order, whichever classes the train split has
    seeds = [int(s) for s in np.random.default_rng(args.seed).integers(
        0, 2**31 - 1, size=2 + len(base))]
    assessed = torch.tensor([taxonomy.is_assessed(n) for n in taxonomy.names])[train.classes]
    everything = torch.ones_like(assessed)
    with_boxes = bool(train.annotated is not None and train.annotated.any())
    jobs = [_Job("body_part", seeds[0], everything, train.classes,
                 options(args.epochs, args.lr), None)]
    if args.shared_epochs > 0:
        shared = everything if args.shared_scope == "all" else assessed
        jobs.append(_Job("shared_abnormal", seeds[1], shared, train.labels,
                         options(args.shared_epochs, args.lr, args.abnormal_batch_size, True),
                         _class_weights(train.labels[shared], "shared_abnormal",
                                        args.normal_ratio), with_boxes))
    finetune_lr = args.finetune_lr if args.shared_epochs else args.lr
    for name in taxonomy.assessed:
        select = train.classes == taxonomy.index(name)
        jobs.append(_Job(f"abnormal_{name}", seeds[2 + base.index(name)], select,
                         train.labels,
                         options(args.abnormal_epochs, finetune_lr, args.abnormal_batch_size,
                                 True),
                         _class_weights(train.labels[select], f"abnormal_{name}",
                                        args.normal_ratio), with_boxes))

    finished: dict[str, dict[str, Any]] = dict(checkpoint["finished"]) if checkpoint else {}
    fill = preprocessing.background
    models: dict[str, nn.Module] = {}
    for position, job in enumerate(jobs):
        generator = _seeded(job.seed)
        if job.name == "body_part":
            model = pooled_input(body_part_classifier(num_classes=len(taxonomy), **build),
                                 args.body_part_pool)
        elif job.name == "shared_abnormal":
            model = fracture_classifier(**build)
        else:
            model = copy.deepcopy(models["shared_abnormal"])
        if job.name in finished:
            model.load_state_dict(finished[job.name]["model"])
            model.to(device).eval()
        else:
            resume = None
            if checkpoint is not None and checkpoint["network"] == job.name:
                resume = checkpoint["current"]

            def save(state: EpochState, position: int = position, name: str = job.name) -> None:
                store.save({"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint,
                            "position": position, "network": name, "epoch": state["epoch"],
                            "current": state, "finished": finished})

            rows = torch.nonzero(job.select).flatten()
            history = train_network(
                model, train.images[job.select], job.targets[job.select], job.options,
                generator=generator, fill=fill, device=device, name=job.name,
                class_weights=job.class_weights, autocast_dtype=autocast, resume=resume,
                on_epoch=save,
                boxes=[train.boxes[int(i)] for i in rows] if job.dense else None,
                annotated=(train.annotated[job.select]
                           if job.dense and train.annotated is not None else None),
                normalization=(preprocessing.mean, preprocessing.std))
            finished[job.name] = {
                "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "history": history,
            }
        models[job.name] = model
        if job.name == "body_part" and args.shared_epochs == 0:
            # the per-class networks start from one untrained (or ImageNet) network
            _seeded(seeds[1])
            models["shared_abnormal"] = fracture_classifier(**build).to(device).eval()

    network = TwoStageNetwork(models["body_part"],
                              {name: models[f"abnormal_{name}"] for name in taxonomy.assessed},
                              taxonomy)
    training = _provenance(args, device=device, autocast=autocast, taxonomy=taxonomy,
                           train_studies=len(train_studies), valid_studies=len(valid_studies),
                           train=train, valid=valid, jobs=jobs, finished=finished,
                           checkpoint=checkpoint, seconds=time.perf_counter() - started)

    from models.training.calibrate import calibrate_and_save

    path = calibrate_and_save(network, train=train, valid=valid, valid_studies=valid_studies,
                              taxonomy=taxonomy, preprocessing=preprocessing, args=args,
                              training=training, device=device)
    store.clear()
    logger.info("bundle written to %s in %.0fs", path, time.perf_counter() - started)


def _class_weights(labels: torch.Tensor, name: str,
                   normal_ratio: float | None = None) -> torch.Tensor:
    """MURA's weights over the images one epoch sees (with ``normal_ratio``, the drawn share
    of normal images)."""
    try:
        weights = mura_class_weights(labels)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc
    if normal_ratio is None:
        return weights
    abnormal = int((labels == 1).sum())
    normal = min(int((labels == 0).sum()), round(normal_ratio * abnormal))
    return mura_class_weights(torch.cat([torch.ones(abnormal), torch.zeros(normal)]))


def _provenance(args: argparse.Namespace, *, device: torch.device,
                autocast: torch.dtype | None, taxonomy: Taxonomy, train_studies: int,
                valid_studies: int, train: ImageBank, valid: ImageBank, jobs: list[_Job],
                finished: Mapping[str, Mapping[str, Any]], checkpoint: Mapping[str, Any] | None,
                seconds: float) -> dict[str, Any]:
    """The manifest's JSON-ready ``training`` record."""
    dests = {a.dest for a in get_args_parser()._actions}
    return {
        "command": shlex.join(command_line(args)),
        "argv": list(sys.argv),
        "options": {k: (str(v) if isinstance(v, Path) else v)
                    for k, v in sorted(vars(args).items()) if k in dests},
        "preset": args.preset,
        "seed": args.seed,
        "deterministic": args.deterministic,
        "arch": args.arch,
        "device": str(device),
        "amp_dtype": str(autocast).removeprefix("torch.") if autocast is not None else None,
        "threads": args.threads,
        "classes": list(taxonomy.names),
        "data": {
            "train_studies": train_studies, "train_images": len(train.labels),
            "valid_studies": valid_studies, "valid_images": len(valid.labels),
            "train_images_per_class": {
                name: int((train.classes == i).sum()) for i, name in enumerate(taxonomy.names)
            },
            "train_images_annotated": (int(train.annotated.sum())
                                       if train.annotated is not None else 0),
            "train_boxes": sum(len(b) for b in train.boxes),
        },
        "class_weights": {job.name: [float(w) for w in job.class_weights]
                          for job in jobs if job.class_weights is not None},
        "final_epoch": {job.name: dict(finished[job.name]["history"][-1]) for job in jobs},
        "resumed_from": (None if checkpoint is None else
                         {"network": checkpoint["network"], "epoch": checkpoint["epoch"]}),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": np.__version__},
        "seconds": round(seconds, 1),
    }
