"""Train a two-stage bundle (torchvision reference-script style).

Three steps, all on the train split:

1. stage 1, the bone-type MobileNetV2, on every train image;
2. a shared normal/abnormal MobileNetV2 on every train image (``--shared-epochs``; 0 skips it),
   whose weights initialise every stage-2 network: without ImageNet weights this stands in for
   the paper's ImageNet initialisation, and each bone type profits from the others' findings;
3. stage 2, one normal/abnormal MobileNetV2 per bone type, fine-tuned on that bone type's
   train images (``--abnormal-epochs``, ``--finetune-lr``). Labels are the studies' labels,
   as in MURA.

Nothing is selected on the validation split: it is only evaluated at the end, through the
same two-stage routing as inference, and the metrics go into the manifest. Images are
preprocessed once (:func:`models.enhance.preprocess`) and kept in memory as float16; batches
are augmented on the fly (mirroring and a small random affine transform). Without ImageNet
weights, networks start with zero-initialised residual branches, which makes training from
scratch stable; training runs channels-last, markedly faster for depthwise convolutions on
CPU. By default the bundle averages each image with its mirror image at inference
(``--flip-tta``); the validation metrics are computed that way too.

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
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
import torchvision
from torch import nn

from models.bundle import MANIFEST_NAME, save_bundle
from models.data import MuraImageDataset, load_studies
from models.enhance import Preprocessing
from models.evaluate import evaluate_predictions, group_predictions
from models.networks import (
    TwoStageNetwork,
    abnormality_classifier,
    bone_type_classifier,
)
from models.results import BONE_TYPES

logger = logging.getLogger(__name__)

#: Option defaults filled in by ``--preset``; explicit flags override them.
PRESETS: Mapping[str, Mapping[str, Any]] = {
    # `ossa phantom --studies 80 --seed 0` + this preset: about 3.5 minutes on 2 CPU cores.
    "demo": {
        "input_size": 96, "width_mult": 0.5, "epochs": 12, "shared_epochs": 24,
        "abnormal_epochs": 6, "batch_size": 32, "lr": 5e-3, "finetune_lr": 1e-3,
        "weight_decay": 1e-4, "label_smoothing": 0.0, "clip_limit": 0.01, "kernel_size": 48,
        "augment": True,
    },
    # The tests' phantom (80 studies per bone type, 160-320 px images), once per test session.
    # Smaller phantoms or fewer epochs fall short of the tests' accuracy bar.
    "test": {
        "input_size": 96, "width_mult": 0.5, "epochs": 12, "shared_epochs": 20,
        "abnormal_epochs": 6, "batch_size": 32, "lr": 5e-3, "finetune_lr": 1e-3,
        "weight_decay": 1e-4, "label_smoothing": 0.0, "clip_limit": 0.01, "kernel_size": 48,
        "augment": True,
    },
}


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
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    augment: bool = True

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


def augment_batch(images: torch.Tensor, generator: torch.Generator, *, fill: float,
                  max_rotation: float = 15.0, max_scale: float = 0.1,
                  max_shift: float = 0.08) -> torch.Tensor:
    """Random mirror and small affine transform of a batch (N x C x S x S).

    Parameters
    ----------
    images : torch.Tensor
        Normalized batch.
    generator : torch.Generator
        Source of randomness (seeded by the caller).
    fill : float
        Value outside the transformed image (the normalized black background).
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
) -> list[dict[str, float]]:
    """Train ``model`` on in-memory ``images`` with AdamW and a one-cycle schedule.

    Parameters
    ----------
    model : torch.nn.Module
        Network mapping a batch to class logits; left in eval mode.
    images : torch.Tensor
        Preprocessed images (N x C x S x S, any float dtype).
    targets : torch.Tensor
        Class indices (N).
    options : TrainingOptions
        Optimisation options.
    generator : torch.Generator
        Seeded generator for batch order and augmentation.
    fill : float
        Normalized background value (augmentation padding).
    device : torch.device
        Device to train on.
    name : str
        Network name for the log.

    Returns
    -------
    list of dict
        Per-epoch ``epoch``, ``loss``, ``accuracy`` (on augmented batches) and ``seconds``.
    """
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"{name}: needs at least 2 training images, got {n}")
    batch_size = min(options.batch_size, n)
    steps_per_epoch = n // batch_size
    # channels-last runs MobileNetV2's depthwise convolutions markedly faster on CPU
    model.to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr,
                                  weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=options.lr, total_steps=options.epochs * steps_per_epoch,
        pct_start=0.25,
    )
    history = []
    for epoch in range(1, options.epochs + 1):
        start = time.perf_counter()
        order = torch.randperm(n, generator=generator)
        total_loss, correct, seen = 0.0, 0, 0
        for step in range(steps_per_epoch):
            index = order[step * batch_size : (step + 1) * batch_size]
            x = images[index].float()
            if options.augment:
                x = augment_batch(x, generator, fill=fill)
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            y = targets[index].to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=options.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += float(loss.detach()) * len(index)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(index)
        record = {"epoch": epoch, "loss": total_loss / seen, "accuracy": correct / seen,
                  "seconds": time.perf_counter() - start}
        history.append(record)
        logger.info("%s epoch %d/%d loss %.4f acc %.3f (%.1fs)", name, epoch, options.epochs,
                    record["loss"], record["accuracy"], record["seconds"])
    model.to(memory_format=torch.contiguous_format).eval()
    return history


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line options of ``ossa train``."""
    parser = argparse.ArgumentParser(
        description="Train a two-stage MobileNetV2 bundle (bone type, then per-bone abnormality) "
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
                        help="torch.use_deterministic_algorithms (default: on)")
    parser.add_argument("--imagenet-weights", type=Path, default=None,
                        help="local torchvision mobilenet_v2 ImageNet state dict to start from "
                             "(needs --width-mult 1.0); nothing is downloaded")
    parser.add_argument("--epochs", type=int, default=None, help="bone-type network epochs")
    parser.add_argument("--shared-epochs", type=int, default=None,
                        help="epochs of the shared abnormality network that initialises the "
                             "per-bone networks (0: start them from ImageNet or scratch)")
    parser.add_argument("--abnormal-epochs", type=int, default=None,
                        help="epochs of each per-bone abnormality network")
    parser.add_argument("--input-size", type=int, default=None, help="network input side (px)")
    parser.add_argument("--width-mult", type=float, default=None, help="MobileNetV2 width")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None,
                        help="peak one-cycle learning rate (bone-type and shared networks)")
    parser.add_argument("--finetune-lr", type=float, default=None,
                        help="peak learning rate of the per-bone networks")
    parser.add_argument("--weight-decay", type=float, default=None)
    parser.add_argument("--label-smoothing", type=float, default=None)
    parser.add_argument("--clip-limit", type=float, default=None, help="CLAHE clip limit")
    parser.add_argument("--kernel-size", type=int, default=None, help="CLAHE tile size (px)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="mirror + random affine augmentation")
    parser.add_argument("--flip-tta", action=argparse.BooleanOptionalAction, default=True,
                        help="average predictions over each image and its mirror (default: on)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="study-level decision threshold (default: 0.5)")
    parser.add_argument("--name", default=None, help="bundle name (default: --out's name)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    parser.add_argument("--workers", type=int, default=0,
                        help="threads for image preprocessing (default: 0)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: os.cpu_count())")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    return parser


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Copy of ``args`` with every option left unset filled from its preset."""
    if args.preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {args.preset!r}")
    resolved = argparse.Namespace(**vars(args))
    for key, value in PRESETS[args.preset].items():
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


def _seeded(seed: int) -> torch.Generator:
    """Seed torch's global generator (weight init) and return a generator for the data."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def main(args: argparse.Namespace) -> int:
    """Train, evaluate on valid and write the bundle described by ``args``; returns 0."""
    args = resolve_args(args)
    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(args.deterministic)
    try:
        _run(args)
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])
    return 0


def _run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    device = torch.device(args.device)
    if (Path(args.out) / MANIFEST_NAME).exists() and not args.overwrite:
        raise FileExistsError(f"a bundle already exists in {args.out} (use --overwrite)")
    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {args.threshold}")
    for key in ("epochs", "abnormal_epochs"):
        if getattr(args, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(args, key)}")
    if args.shared_epochs < 0:
        raise ValueError(f"shared_epochs must be >= 0, got {args.shared_epochs}")
    preprocessing = Preprocessing(input_size=args.input_size, clip_limit=args.clip_limit,
                                  kernel_size=args.kernel_size)
    build = {"width_mult": args.width_mult, "in_channels": preprocessing.channels,
             "imagenet_weights": args.imagenet_weights, "zero_init_residual": True}

    def options(epochs: int, lr: float) -> TrainingOptions:
        return TrainingOptions(epochs=epochs, batch_size=args.batch_size, lr=lr,
                               weight_decay=args.weight_decay,
                               label_smoothing=args.label_smoothing, augment=args.augment)

    # one seed per network, so that each is reproducible on its own
    seeds = [int(s) for s in np.random.default_rng(args.seed).integers(0, 2**31 - 1, size=9)]

    train_studies = load_studies(args.data, "train")
    valid_studies = load_studies(args.data, "valid")
    t0 = time.perf_counter()
    train = MuraImageDataset(train_studies, preprocessing).bank(workers=args.workers)
    valid = MuraImageDataset(valid_studies, preprocessing).bank(workers=args.workers)
    logger.info("preprocessed %d train and %d valid images in %.1fs", len(train.labels),
                len(valid.labels), time.perf_counter() - t0)
    fill = preprocessing.background
    for i, bone in enumerate(BONE_TYPES):
        if int((train.bones == i).sum()) < 2:
            raise ValueError(f"the train split needs at least 2 images of {bone}")

    generator = _seeded(seeds[0])
    bone_net = bone_type_classifier(**build)
    history = {"bone_type": train_network(
        bone_net, train.images, train.bones, options(args.epochs, args.lr),
        generator=generator, fill=fill, device=device, name="bone_type")}

    generator = _seeded(seeds[1])
    start_net = abnormality_classifier(**build)
    if args.shared_epochs > 0:
        history["shared_abnormal"] = train_network(
            start_net, train.images, train.labels, options(args.shared_epochs, args.lr),
            generator=generator, fill=fill, device=device, name="shared_abnormal")

    abnormal: dict[str, nn.Module] = {}
    for i, bone in enumerate(BONE_TYPES):
        generator = _seeded(seeds[2 + i])
        model = copy.deepcopy(start_net)
        mask = train.bones == i
        history[f"abnormal_{bone}"] = train_network(
            model, train.images[mask], train.labels[mask],
            options(args.abnormal_epochs, args.finetune_lr if args.shared_epochs else args.lr),
            generator=generator, fill=fill, device=device, name=f"abnormal[{bone}]")
        abnormal[bone] = model
    network = TwoStageNetwork(bone_net, abnormal, BONE_TYPES, flip_tta=args.flip_tta)

    output = network.to(device).predict(valid.images, batch_size=64, device=device)
    predictions = group_predictions(output, valid.studies.tolist(), len(valid_studies),
                                    network.bone_types)
    evaluation = evaluate_predictions(valid_studies, predictions, threshold=args.threshold)
    logger.info("valid: bone-type accuracy %.3f, study accuracy %.3f, kappa %.3f",
                evaluation.bone_accuracy, evaluation.study_accuracy, evaluation.kappa)

    dests = {a.dest for a in get_args_parser()._actions}
    training = {
        "command": shlex.join(command_line(args)),
        "argv": list(sys.argv),
        "options": {k: (str(v) if isinstance(v, Path) else v)
                    for k, v in sorted(vars(args).items()) if k in dests},
        "preset": args.preset,
        "seed": args.seed,
        "deterministic": args.deterministic,
        "data": {
            "train_studies": len(train_studies), "train_images": len(train.labels),
            "valid_studies": len(valid_studies), "valid_images": len(valid.labels),
        },
        "final_epoch": {k: v[-1] for k, v in history.items()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": np.__version__},
        "seconds": round(time.perf_counter() - started, 1),
    }
    save_bundle(args.out, network, width_mult=args.width_mult, preprocessing=preprocessing,
                threshold=args.threshold, training=training, metrics=evaluation.to_dict(),
                name=args.name, overwrite=args.overwrite)
    logger.info("bundle written to %s in %.0fs", args.out, time.perf_counter() - started)
