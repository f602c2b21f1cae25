"""Model bundle manifests: what a bundle holds, checked before any weights are read.

A bundle is a directory::

    manifest.json            format, architecture, preprocessing, taxonomy, thresholds,
                             abstention, training provenance, metrics, sha256 of every file
    body_part.onnx           stage-1 network for ONNX Runtime (serving)
    abnormal_<CLASS>.onnx    stage-2 network of each assessed class
    body_part.pt, abnormal_<CLASS>.pt
                             the same networks as PyTorch state dicts (training, torch
                             backend; optional in a serving-only bundle)
    ood.npz                  feature statistics of the out-of-distribution score (optional)

:func:`open_bundle` parses the manifest and verifies the sha256 of every file it lists before
anything reads them, and refuses a malformed, incomplete or tampered bundle with a
:class:`BundleError` that names the file or key. This module imports neither torch nor
onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from models.serving.enhance import Preprocessing
from models.serving.taxonomy import Taxonomy

#: Value of the manifest's ``format`` key.
BUNDLE_FORMAT = "ossa-two-stage-bundle"
#: Current manifest format version (2: taxonomy, abstention, per-class thresholds, ONNX;
#: 3: stage-2 fracture maps, localisation, stage-1 input pooling, foreground crop).
FORMAT_VERSION = 3
MANIFEST_NAME = "manifest.json"
#: Weights file stem of the stage-1 network.
BODY_PART = "body_part"
#: File of the out-of-distribution statistics.
OOD_FILE = "ood.npz"
#: Architectures a bundle may declare (torchvision builders of the same names).
ARCHITECTURES: tuple[str, ...] = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
#: Weights formats: ONNX for serving, PyTorch state dicts for training and the torch backend.
WEIGHT_FORMATS: tuple[str, ...] = (".onnx", ".pt")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,47}\Z")
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}\Z")


class BundleError(ValueError):
    """A model bundle is missing, malformed or does not match its checksums."""


def network_stem(name: str) -> str:
    """File stem of a network: ``body_part`` or ``abnormal_<CLASS>``."""
    return BODY_PART if name == BODY_PART else f"abnormal_{name}"


def network_names(taxonomy: Taxonomy) -> tuple[str, ...]:
    """The networks of a bundle: ``body_part`` then each assessed class."""
    return (BODY_PART, *taxonomy.assessed)


def _probability(name: str, value: Any) -> float:
    if (not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value)
            or not 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Abstention:
    """When an image is "not assessed" although stage 1 names an assessed class.

    Parameters
    ----------
    min_probability : float
        Stage-1 top-class probability below which an image is not assessed.
    ood_threshold : float or None
        Out-of-distribution score above which an image is not assessed (None: no score).
    rule : str
        How both were chosen, in words (stored for the model card and the SR reader).
    """

    min_probability: float = 0.0
    ood_threshold: float | None = None
    rule: str = "none"

    def __post_init__(self) -> None:
        _probability("abstention.min_probability", self.min_probability)
        if self.ood_threshold is not None and (
            not isinstance(self.ood_threshold, int | float) or isinstance(self.ood_threshold, bool)
            or not math.isfinite(self.ood_threshold)
        ):
            raise ValueError(f"abstention.ood_threshold must be a finite number or null, "
                             f"got {self.ood_threshold!r}")
        if not isinstance(self.rule, str):
            raise ValueError("abstention.rule must be a string")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"min_probability": self.min_probability, "ood_threshold": self.ood_threshold,
                "rule": self.rule}

    @classmethod
    def from_dict(cls, data: Any) -> Abstention:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, Mapping) or set(data) != {"min_probability", "ood_threshold",
                                                          "rule"}:
            raise ValueError("abstention must have exactly min_probability, ood_threshold, rule")
        return cls(data["min_probability"], data["ood_threshold"], data["rule"])


#: How a stage-2 network's image probability is formed (:class:`Localisation`).
IMAGE_SCORES: tuple[str, ...] = ("pooled", "map", "blend")


@dataclass(frozen=True)
class Localisation:
    """How stage 2's fracture map gives the image probability and the findings.

    Parameters
    ----------
    image_score : {"pooled", "map", "blend"}
        The image's probability of abnormality: the pooled classifier's softmax (the paper's),
        the mean of the ``top_k`` highest cells of the fracture map, or the mean of both.
    top_k : int
        Cells averaged by the ``map`` score.
    finding_thresholds : mapping of str to float
        Per assessed class, the cell probability from which a region of the map is a finding
        (empty: the bundle reports no findings, e.g. trained without boxes).
    max_findings : int
        Findings reported per image at most, the most probable first.
    stride : int
        Input pixels per map cell.
    rule : str
        How the above were chosen, in words (for the model card).
    """

    image_score: str = "pooled"
    top_k: int = 4
    finding_thresholds: Mapping[str, float] = field(default_factory=dict)
    max_findings: int = 3
    stride: int = 16
    rule: str = "none"

    def __post_init__(self) -> None:
        if self.image_score not in IMAGE_SCORES:
            raise ValueError(f"localisation.image_score must be one of {IMAGE_SCORES}, "
                             f"got {self.image_score!r}")
        for key in ("top_k", "max_findings", "stride"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"localisation.{key} must be a positive integer, "
                                 f"got {value!r}")
        if not isinstance(self.finding_thresholds, Mapping):
            raise ValueError("localisation.finding_thresholds must map classes to numbers")
        for key, value in self.finding_thresholds.items():
            _probability(f"localisation.finding_thresholds[{key!r}]", value)
        if not isinstance(self.rule, str):
            raise ValueError("localisation.rule must be a string")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"image_score": self.image_score, "top_k": self.top_k,
                "finding_thresholds": dict(self.finding_thresholds),
                "max_findings": self.max_findings, "stride": self.stride, "rule": self.rule}

    @classmethod
    def from_dict(cls, data: Any) -> Localisation:
        """Inverse of :meth:`to_dict`."""
        keys = {"image_score", "top_k", "finding_thresholds", "max_findings", "stride", "rule"}
        if not isinstance(data, Mapping) or set(data) != keys:
            raise ValueError(f"localisation must have exactly {sorted(keys)}")
        return cls(**data)


@dataclass(frozen=True)
class BundleManifest:
    """Parsed, validated ``manifest.json``.

    Parameters
    ----------
    name : str
        Bundle name (letters, digits, ``._-``; at most 48 characters).
    architecture : str
        One of :data:`ARCHITECTURES`.
    width_mult : float
        Width multiplier of every network.
    preprocessing : Preprocessing
        How images are turned into network inputs.
    taxonomy : Taxonomy
        Stage-1 classes in output order, their codes, and which are assessed.
    thresholds : mapping of str to float
        Operating threshold of each assessed class: a study whose mean probability reaches
        the threshold of its body part is called abnormal.
    threshold_rule : str
        How the thresholds were chosen (``"0.5"``, ``"youden"``, ``"sensitivity=0.9"``).
    abstention : Abstention
        When an image is not assessed.
    files : mapping of str to str
        Every file of the bundle (but the manifest) to its sha256 (hex).
    flip_tta : bool
        Whether inference averages each image with its mirror image.
    localisation : Localisation
        Image score and findings from stage 2's fracture maps.
    body_part_pool : int
        Average pooling (1, 2 or 4) at the start of the stage-1 network: the body part is
        named from a coarser image than stage 2 sees.
    training, metrics : mapping
        Provenance and validation metrics (JSON).
    """

    name: str
    architecture: str
    width_mult: float
    preprocessing: Preprocessing
    taxonomy: Taxonomy
    thresholds: Mapping[str, float]
    threshold_rule: str
    abstention: Abstention
    files: Mapping[str, str]
    flip_tta: bool = False
    localisation: Localisation = field(default_factory=Localisation)
    body_part_pool: int = 1
    training: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_PATTERN.match(self.name):
            raise ValueError(
                f"name must be 1-48 letters, digits or '._-' starting with a letter or digit, "
                f"got {self.name!r}"
            )
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, "
                             f"got {self.architecture!r}")
        if (not isinstance(self.width_mult, int | float) or isinstance(self.width_mult, bool)
                or not 0.0 < self.width_mult <= 4.0):
            raise ValueError(f"width_mult must be in (0, 4], got {self.width_mult!r}")
        if not isinstance(self.preprocessing, Preprocessing):
            raise ValueError("preprocessing must be a Preprocessing")
        if not isinstance(self.taxonomy, Taxonomy):
            raise ValueError("taxonomy must be a Taxonomy")
        if not isinstance(self.thresholds, Mapping) or set(self.thresholds) != set(
            self.taxonomy.assessed
        ):
            got = sorted(self.thresholds) if isinstance(self.thresholds, Mapping) else None
            raise ValueError(f"thresholds must give one value per assessed class "
                             f"{list(self.taxonomy.assessed)}, got {got}")
        for key, value in self.thresholds.items():
            _probability(f"thresholds[{key!r}]", value)
        if not isinstance(self.threshold_rule, str) or not self.threshold_rule:
            raise ValueError("threshold_rule must be a non-empty string")
        if not isinstance(self.abstention, Abstention):
            raise ValueError("abstention must be an Abstention")
        if not isinstance(self.files, Mapping):
            raise ValueError("files must map file names to sha256 digests")
        for file, digest in self.files.items():
            if not isinstance(file, str) or "/" in file or file.startswith(".") or (
                file == MANIFEST_NAME
            ):
                raise ValueError(f"files: {file!r} is not a plain file name of the bundle")
            if not isinstance(digest, str) or not _SHA256_PATTERN.match(digest):
                raise ValueError(f"files[{file!r}] must be a lowercase hex sha256")
        for net in network_names(self.taxonomy):
            if not any(network_stem(net) + ext in self.files for ext in WEIGHT_FORMATS):
                raise ValueError(f"files must list {network_stem(net)}.onnx or "
                                 f"{network_stem(net)}.pt")
        if (self.abstention.ood_threshold is None) != (OOD_FILE not in self.files):
            raise ValueError(f"abstention.ood_threshold and files[{OOD_FILE!r}] go together")
        if not isinstance(self.flip_tta, bool):
            raise ValueError(f"flip_tta must be a bool, got {self.flip_tta!r}")
        if not isinstance(self.localisation, Localisation):
            raise ValueError("localisation must be a Localisation")
        unknown = set(self.localisation.finding_thresholds) - set(self.taxonomy.assessed)
        if unknown:
            raise ValueError(f"localisation.finding_thresholds names classes that are not "
                             f"assessed: {sorted(unknown)}")
        if self.body_part_pool not in (1, 2, 4) or isinstance(self.body_part_pool, bool):
            raise ValueError(f"body_part_pool must be 1, 2 or 4, got {self.body_part_pool!r}")
        if self.preprocessing.input_size % self.body_part_pool:
            raise ValueError(f"preprocessing.input_size must be a multiple of body_part_pool "
                             f"{self.body_part_pool}, got {self.preprocessing.input_size}")
        for key in ("training", "metrics"):
            if not isinstance(getattr(self, key), Mapping):
                raise ValueError(f"{key} must be a mapping")

    def has_format(self, ext: str) -> bool:
        """Whether every network is stored in weights format ``ext`` (``.onnx`` or ``.pt``)."""
        return all(network_stem(n) + ext in self.files for n in network_names(self.taxonomy))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form of the manifest."""
        return {
            "format": BUNDLE_FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "architecture": self.architecture,
            "width_mult": self.width_mult,
            "preprocessing": self.preprocessing.to_dict(),
            "taxonomy": self.taxonomy.to_dict(),
            "thresholds": dict(self.thresholds),
            "threshold_rule": self.threshold_rule,
            "abstention": self.abstention.to_dict(),
            "flip_tta": self.flip_tta,
            "localisation": self.localisation.to_dict(),
            "body_part_pool": self.body_part_pool,
            "files": {k: {"sha256": v} for k, v in sorted(self.files.items())},
            "training": dict(self.training),
            "metrics": dict(self.metrics),
        }

    def to_json(self) -> str:
        """The text of ``manifest.json``."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> BundleManifest:
        """Parse a manifest; raises :class:`BundleError` naming the bad key."""
        if not isinstance(data, Mapping):
            raise BundleError(f"{MANIFEST_NAME}: top level must be a JSON object")
        if data.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{MANIFEST_NAME}: format must be {BUNDLE_FORMAT!r}, "
                              f"got {data.get('format')!r}")
        if data.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"{MANIFEST_NAME}: unsupported format_version {data.get('format_version')!r} "
                f"(this code reads {FORMAT_VERSION}); retrain the bundle with `ossa train`"
            )
        required = ("name", "architecture", "width_mult", "preprocessing", "taxonomy",
                    "thresholds", "threshold_rule", "abstention", "flip_tta", "localisation",
                    "body_part_pool", "files", "training", "metrics")
        for key in required:
            if key not in data:
                raise BundleError(f"{MANIFEST_NAME}: missing key {key!r}")
        parsed: dict[str, Any] = {}
        for key, parse in (("preprocessing", Preprocessing.from_dict),
                           ("taxonomy", Taxonomy.from_dict),
                           ("abstention", Abstention.from_dict),
                           ("localisation", Localisation.from_dict)):
            try:
                parsed[key] = parse(data[key])
            except (TypeError, ValueError) as exc:
                raise BundleError(f"{MANIFEST_NAME}: key {key!r}: {exc}") from exc
        files = data["files"]
        if not isinstance(files, Mapping) or not all(
            isinstance(v, Mapping) and "sha256" in v for v in files.values()
        ):
            raise BundleError(f"{MANIFEST_NAME}: key 'files' must map file names to "
                              "{'sha256': ...}")
        try:
            return cls(
                name=data["name"],
                architecture=data["architecture"],
                width_mult=data["width_mult"],
                thresholds=data["thresholds"],
                threshold_rule=data["threshold_rule"],
                files={k: v["sha256"] for k, v in files.items()},
                flip_tta=data["flip_tta"],
                body_part_pool=data["body_part_pool"],
                training=data["training"],
                metrics=data["metrics"],
                **parsed,
            )
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{MANIFEST_NAME}: {exc}") from exc


@dataclass(frozen=True)
class BundleInfo:
    """A bundle directory whose manifest parsed and whose files match their checksums.

    Parameters
    ----------
    path : Path
        Bundle directory.
    manifest : BundleManifest
        Its manifest.
    manifest_sha256 : str
        sha256 of ``manifest.json`` as stored (identifies the bundle).
    """

    path: Path
    manifest: BundleManifest
    manifest_sha256: str

    @property
    def version(self) -> str:
        """``<name>@<first 12 hex digits of the manifest's sha256>``."""
        return f"{self.manifest.name}@{self.manifest_sha256[:12]}"

    def file(self, name: str) -> Path:
        """Path of a file the manifest lists (``BundleError`` if it lists no such file)."""
        if name not in self.manifest.files:
            raise BundleError(f"{name}: not in this bundle's {MANIFEST_NAME}")
        return self.path / name

    def weights(self, network: str, ext: str) -> Path:
        """Weights file of ``network`` (``body_part`` or a class) in format ``ext``."""
        name = network_stem(network) + ext
        if name not in self.manifest.files:
            hint = " (add them with `ossa bundle export-onnx`)" if ext == ".onnx" else ""
            raise BundleError(f"{name}: this bundle has no {ext} weights{hint}")
        return self.path / name


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(path: Path, manifest: BundleManifest) -> None:
    """Write ``path/manifest.json`` atomically (temporary file, fsync, rename)."""
    tmp = path / f".{MANIFEST_NAME}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / MANIFEST_NAME)


def serving_copy(source: Path, destination: Path) -> BundleInfo:
    """Copy a bundle without its PyTorch weights: the ONNX networks, ``ood.npz`` and a
    manifest listing only those (``ossa bundle serving-copy``; what ``bundles/`` ships).

    Raises
    ------
    BundleError
        When ``source`` is not a valid bundle or lacks ONNX networks.
    FileExistsError
        When ``destination`` already holds a bundle.
    """
    info = open_bundle(source)
    if not info.manifest.has_format(".onnx"):
        raise BundleError(f"{source}: has no ONNX networks (run `ossa bundle export-onnx`)")
    destination = Path(destination)
    if (destination / MANIFEST_NAME).exists():
        raise FileExistsError(f"a bundle already exists in {destination}")
    destination.mkdir(parents=True, exist_ok=True)
    files = {k: v for k, v in info.manifest.files.items() if not k.endswith(".pt")}
    for name in files:
        shutil.copyfile(info.path / name, destination / name)
    write_manifest(destination, replace(info.manifest, files=files))
    return open_bundle(destination)


def open_bundle(path: Path) -> BundleInfo:
    """Read a bundle's manifest and verify every listed file's sha256 (nothing else is read).

    Parameters
    ----------
    path : Path
        Bundle directory (or its ``manifest.json``).

    Raises
    ------
    BundleError
        When the manifest is missing, not JSON or malformed, or a listed file is missing or
        differs from its checksum.
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
    for file, expected in manifest.files.items():
        file_path = path / file
        if not file_path.is_file():
            raise BundleError(f"{file}: file listed in {MANIFEST_NAME} is missing")
        actual = sha256_file(file_path)
        if actual != expected:
            raise BundleError(f"{file}: sha256 {actual} does not match the manifest's {expected}")
    return BundleInfo(path=path, manifest=manifest,
                      manifest_sha256=hashlib.sha256(raw).hexdigest())
