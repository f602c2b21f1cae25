"""Model bundles: the weights of both stages plus everything needed to use them.

A bundle is a directory::

    manifest.json          format, architecture, preprocessing, class order, threshold,
                           training command and seed, metrics, sha256 of each weights file
    bone_type.pt           state dict of the stage-1 network
    abnormal_ELBOW.pt ...  state dict of each stage-2 network (one per bone type)

:func:`load_bundle` verifies every checksum before reading any weights (with
``torch.load(..., weights_only=True)``) and refuses a malformed, incomplete or tampered bundle
with a :class:`BundleError` that names the offending file or key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from models.enhance import Preprocessing
from models.networks import ARCHITECTURE, TwoStageNetwork, two_stage_mobilenet_v2
from models.results import check_bone_order

logger = logging.getLogger(__name__)

#: Value of the manifest's ``format`` key.
BUNDLE_FORMAT = "ossa-two-stage-bundle"
#: Current manifest format version.
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
BONE_TYPE_WEIGHTS = "bone_type.pt"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,47}$")
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class BundleError(ValueError):
    """A model bundle is missing, malformed or does not match its checksums."""


def abnormal_weights_name(bone: str) -> str:
    """File name of the stage-2 weights of ``bone``."""
    return f"abnormal_{bone}.pt"


def _weights_modules(network: TwoStageNetwork) -> dict[str, torch.nn.Module]:
    """Each weights file of a bundle and the module of ``network`` it holds."""
    modules: dict[str, torch.nn.Module] = {BONE_TYPE_WEIGHTS: network.bone_type}
    for bone in network.bone_types:
        modules[abnormal_weights_name(bone)] = network.abnormal[bone]
    return modules


@dataclass(frozen=True)
class BundleManifest:
    """Parsed, validated ``manifest.json``.

    Parameters
    ----------
    name : str
        Bundle name (letters, digits, ``._-``; at most 48 characters).
    width_mult : float
        MobileNetV2 width multiplier of every network.
    preprocessing : Preprocessing
        How images are turned into network inputs.
    bone_types : tuple of str
        Class order of the stage-1 network.
    threshold : float
        Study probability at or above which a study is called abnormal.
    weights : mapping of str to str
        Weights file name to its sha256 (hex).
    training : mapping
        Provenance: command line, seed, preset, resolved options, versions, data summary.
    metrics : mapping
        Validation metrics computed at training time.
    flip_tta : bool
        Whether inference averages each image with its mirror image.
    architecture : str
        Always ``"mobilenet_v2"`` in this format version.
    """

    name: str
    width_mult: float
    preprocessing: Preprocessing
    bone_types: tuple[str, ...]
    threshold: float
    weights: Mapping[str, str]
    training: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    flip_tta: bool = False
    architecture: str = ARCHITECTURE

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_PATTERN.match(self.name):
            raise ValueError(
                f"name must be 1-48 letters, digits or '._-' starting with a letter or digit, "
                f"got {self.name!r}"
            )
        if self.architecture != ARCHITECTURE:
            raise ValueError(f"architecture must be {ARCHITECTURE!r}, got {self.architecture!r}")
        if (not isinstance(self.width_mult, int | float) or isinstance(self.width_mult, bool)
                or not 0.0 < self.width_mult <= 4.0):
            raise ValueError(f"width_mult must be in (0, 4], got {self.width_mult!r}")
        if not isinstance(self.preprocessing, Preprocessing):
            raise ValueError("preprocessing must be a Preprocessing")
        bones = check_bone_order(self.bone_types)
        object.__setattr__(self, "bone_types", bones)
        if (not isinstance(self.threshold, int | float) or isinstance(self.threshold, bool)
                or math.isnan(self.threshold) or not 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold!r}")
        expected = {BONE_TYPE_WEIGHTS} | {abnormal_weights_name(b) for b in bones}
        if not isinstance(self.weights, Mapping) or set(self.weights) != expected:
            got = sorted(self.weights) if isinstance(self.weights, Mapping) else self.weights
            raise ValueError(f"weights must list exactly {sorted(expected)}, got {got}")
        for file, digest in self.weights.items():
            if not isinstance(digest, str) or not _SHA256_PATTERN.match(digest):
                raise ValueError(f"weights[{file!r}] must be a lowercase hex sha256")
        for key in ("training", "metrics"):
            if not isinstance(getattr(self, key), Mapping):
                raise ValueError(f"{key} must be a mapping")
        if not isinstance(self.flip_tta, bool):
            raise ValueError(f"flip_tta must be a bool, got {self.flip_tta!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form of the manifest."""
        return {
            "format": BUNDLE_FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "architecture": self.architecture,
            "width_mult": self.width_mult,
            "preprocessing": self.preprocessing.to_dict(),
            "bone_types": list(self.bone_types),
            "threshold": self.threshold,
            "flip_tta": self.flip_tta,
            "weights": {k: {"sha256": v} for k, v in sorted(self.weights.items())},
            "training": dict(self.training),
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_dict(cls, data: Any) -> BundleManifest:
        """Parse a manifest; raises :class:`BundleError` naming the bad key."""
        if not isinstance(data, Mapping):
            raise BundleError(f"{MANIFEST_NAME}: top level must be a JSON object")
        required = ("format", "format_version", "name", "architecture", "width_mult",
                    "preprocessing", "bone_types", "threshold", "flip_tta", "weights", "training",
                    "metrics")
        for key in required:
            if key not in data:
                raise BundleError(f"{MANIFEST_NAME}: missing key {key!r}")
        if data["format"] != BUNDLE_FORMAT:
            raise BundleError(f"{MANIFEST_NAME}: format must be {BUNDLE_FORMAT!r}, "
                              f"got {data['format']!r}")
        if data["format_version"] != FORMAT_VERSION:
            raise BundleError(f"{MANIFEST_NAME}: unsupported format_version "
                              f"{data['format_version']!r} (this code reads {FORMAT_VERSION})")
        try:
            preprocessing = Preprocessing.from_dict(data["preprocessing"])
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{MANIFEST_NAME}: key 'preprocessing': {exc}") from exc
        weights = data["weights"]
        if not isinstance(weights, Mapping) or not all(
            isinstance(v, Mapping) and "sha256" in v for v in weights.values()
        ):
            raise BundleError(f"{MANIFEST_NAME}: key 'weights' must map file names to "
                              "{'sha256': ...}")
        bone_types = data["bone_types"]
        if not isinstance(bone_types, list):
            raise BundleError(f"{MANIFEST_NAME}: key 'bone_types' must be a list")
        try:
            return cls(
                name=data["name"],
                width_mult=data["width_mult"],
                preprocessing=preprocessing,
                bone_types=tuple(bone_types),
                threshold=data["threshold"],
                weights={k: v["sha256"] for k, v in weights.items()},
                training=data["training"],
                metrics=data["metrics"],
                flip_tta=data["flip_tta"],
                architecture=data["architecture"],
            )
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{MANIFEST_NAME}: {exc}") from exc


@dataclass(frozen=True)
class LoadedBundle:
    """A verified bundle with its network built and in eval mode.

    Parameters
    ----------
    path : Path
        Bundle directory.
    manifest : BundleManifest
        Its manifest.
    manifest_sha256 : str
        sha256 of ``manifest.json`` as stored (identifies the bundle).
    network : TwoStageNetwork
        Both stages with the bundle's weights, in eval mode.
    """

    path: Path
    manifest: BundleManifest
    manifest_sha256: str
    network: TwoStageNetwork

    @property
    def version(self) -> str:
        """``<name>@<first 12 hex digits of the manifest's sha256>``."""
        return f"{self.manifest.name}@{self.manifest_sha256[:12]}"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_bundle(
    path: Path,
    network: TwoStageNetwork,
    *,
    width_mult: float,
    preprocessing: Preprocessing,
    threshold: float = 0.5,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a bundle directory; the manifest is written last, atomically.

    Parameters
    ----------
    path : Path
        Bundle directory (created).
    network : TwoStageNetwork
        Trained networks of both stages.
    width_mult : float
        Width multiplier the networks were built with.
    preprocessing : Preprocessing
        Preprocessing the networks were trained with.
    threshold : float
        Study-level decision threshold.
    training, metrics : mapping, optional
        JSON-serialisable provenance and validation metrics.
    name : str, optional
        Bundle name; defaults to the directory name.
    overwrite : bool
        Replace an existing bundle in ``path``.

    Returns
    -------
    Path
        The bundle directory.
    """
    path = Path(path)
    if (path / MANIFEST_NAME).exists() and not overwrite:
        raise FileExistsError(f"a bundle already exists in {path} (use overwrite)")
    modules = _weights_modules(network)
    manifest = BundleManifest(
        name=name if name is not None else path.name,
        width_mult=width_mult,
        preprocessing=preprocessing,
        bone_types=network.bone_types,
        threshold=threshold,
        weights=dict.fromkeys(modules, "0" * 64),  # placeholders, validated before any write
        training=dict(training or {}),
        metrics=dict(metrics or {}),
        flip_tta=network.flip_tta,
    )
    path.mkdir(parents=True, exist_ok=True)
    digests = {}
    for file, module in modules.items():
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        torch.save(state, path / file)
        digests[file] = sha256_file(path / file)
    manifest = replace(manifest, weights=digests)
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=False, allow_nan=False) + "\n"
    tmp = path / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path / MANIFEST_NAME)
    logger.info("bundle %s written to %s", manifest.name, path)
    return path


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt archives
        raise BundleError(f"{path.name}: cannot be read as weights ({exc})") from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise BundleError(f"{path.name}: not a state dict of tensors")
    return dict(state)


def load_bundle(path: Path, *, device: str | torch.device = "cpu") -> LoadedBundle:
    """Read and verify a bundle, and build its network.

    Parameters
    ----------
    path : Path
        Bundle directory (or its ``manifest.json``).
    device : str or torch.device
        Device the network is moved to.

    Returns
    -------
    LoadedBundle

    Raises
    ------
    BundleError
        When the manifest is missing, not JSON, or malformed; when a weights file is missing,
        its sha256 differs from the manifest's, or its tensors do not fit the architecture.
    """
    path = Path(path)
    if path.name == MANIFEST_NAME and path.is_file():
        path = path.parent
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{MANIFEST_NAME} not found in {path}")
    raw = manifest_path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{MANIFEST_NAME}: not valid JSON ({exc})") from exc
    manifest = BundleManifest.from_dict(data)

    for file, expected in manifest.weights.items():
        file_path = path / file
        if not file_path.is_file():
            raise BundleError(f"{file}: weights file listed in {MANIFEST_NAME} is missing")
        actual = sha256_file(file_path)
        if actual != expected:
            raise BundleError(f"{file}: sha256 {actual} does not match the manifest's {expected}")

    network = two_stage_mobilenet_v2(width_mult=manifest.width_mult,
                                     in_channels=manifest.preprocessing.channels,
                                     bone_types=manifest.bone_types,
                                     flip_tta=manifest.flip_tta)
    for file, module in _weights_modules(network).items():
        try:
            module.load_state_dict(_load_state(path / file))
        except RuntimeError as exc:
            raise BundleError(f"{file}: weights do not fit {ARCHITECTURE} with width_mult="
                              f"{manifest.width_mult}: {exc}") from exc
    network.to(device).eval()
    return LoadedBundle(path=path, manifest=manifest,
                        manifest_sha256=hashlib.sha256(raw).hexdigest(), network=network)
