"""Writing bundles and reading their PyTorch weights (training side; needs torch).

The bundle format and its verification live in :mod:`models.serving.manifest` (torch-free); this
module writes the ``.pt`` state dicts, exports every network to ONNX
(:class:`models.training.two_stage.ServingHead`: logits plus pooled features or class-activation
map)
and rebuilds a :class:`~models.training.two_stage.TwoStageNetwork` from a verified bundle. Weights
are
read with ``torch.load(weights_only=True)`` only after their checksums matched.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.serving.abstention import OodModel
from models.serving.enhance import Preprocessing
from models.serving.manifest import (
    MANIFEST_NAME,
    OOD_FILE,
    Abstention,
    BundleError,
    BundleInfo,
    BundleManifest,
    Localisation,
    network_stem,
    open_bundle,
    sha256_file,
    write_manifest,
)
from models.serving.taxonomy import Taxonomy
from models.training.networks import body_part_classifier, fracture_classifier, pooled_input
from models.training.two_stage import (
    ABNORMAL_OUTPUTS,
    BODY_PART_OUTPUTS,
    INPUT_NAME,
    TwoStageNetwork,
)

logger = logging.getLogger(__name__)

#: ONNX opset of exported networks (ONNX Runtime >= 1.17 runs it).
ONNX_OPSET = 17


def _modules(network: TwoStageNetwork) -> dict[str, nn.Module]:
    """Each network of ``network`` by its manifest name (``body_part`` or a class)."""
    return {"body_part": network.body_part, **dict(network.abnormal.items())}


def export_onnx(network: TwoStageNetwork, path: Path, *, input_size: int,
                in_channels: int) -> dict[str, str]:
    """Export every network of ``network`` to ``path/<stem>.onnx``; returns name to sha256.

    Each graph takes ``image`` (N x C x S x S, N dynamic) and returns the logits and, for
    stage 1, the pooled features, for stage 2 the fracture probability map.
    """
    digests = {}
    sample = torch.zeros(2, in_channels, input_size, input_size)
    for key, head in network.heads().items():
        head = head.cpu().eval()
        outputs = BODY_PART_OUTPUTS if key == "body_part" else ABNORMAL_OUTPUTS
        file = network_stem(key) + ".onnx"
        # The TorchScript-based exporter: the same graph as the dynamo exporter for these
        # networks (tested against PyTorch to 1e-4) in a sixth of the time.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                head, (sample,), str(path / file), input_names=[INPUT_NAME],
                output_names=list(outputs), opset_version=ONNX_OPSET, dynamo=False,
                dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *outputs)},
            )
        digests[file] = sha256_file(path / file)
    return digests


def save_bundle(
    path: Path,
    network: TwoStageNetwork,
    *,
    architecture: str,
    width_mult: float,
    preprocessing: Preprocessing,
    thresholds: Mapping[str, float],
    threshold_rule: str,
    abstention: Abstention | None = None,
    ood: OodModel | None = None,
    flip_tta: bool = True,
    localisation: Localisation | None = None,
    body_part_pool: int = 1,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    name: str | None = None,
    onnx: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a bundle directory: ``.pt`` and ``.onnx`` weights, then the manifest, atomically.

    Parameters
    ----------
    path : Path
        Bundle directory (created).
    network : TwoStageNetwork
        Trained networks of both stages.
    architecture, width_mult : str, float
        How the networks were built (:func:`models.training.networks.mobilenet`).
    preprocessing : Preprocessing
        Preprocessing the networks were trained with.
    thresholds : mapping of str to float
        Operating threshold of each assessed class; ``threshold_rule`` says how chosen.
    abstention : Abstention, optional
        Minimum body-part probability and OOD threshold (default: never abstain).
    ood : OodModel, optional
        Feature statistics of the OOD score (required when ``abstention.ood_threshold``).
    flip_tta : bool
        Whether inference averages each image with its mirror image.
    localisation : Localisation, optional
        Image score and findings of the fracture maps (default: pooled score, no findings).
    body_part_pool : int
        The stage-1 network's input pooling (already part of ``network.body_part``).
    training, metrics : mapping, optional
        JSON-serialisable provenance and validation metrics.
    name : str, optional
        Bundle name; defaults to the directory name.
    onnx : bool
        Also export the ONNX networks (needed by the default serving backend).
    overwrite : bool
        Replace an existing bundle in ``path``.
    """
    path = Path(path)
    if (path / MANIFEST_NAME).exists() and not overwrite:
        raise FileExistsError(f"a bundle already exists in {path} (use overwrite)")
    taxonomy: Taxonomy = network.taxonomy
    modules = _modules(network)
    placeholder = "0" * 64
    files = {network_stem(k) + ".pt": placeholder for k in modules}
    if ood is not None:
        files[OOD_FILE] = placeholder
    manifest = BundleManifest(  # validated before anything is written
        name=name if name is not None else path.name, architecture=architecture,
        width_mult=width_mult, preprocessing=preprocessing, taxonomy=taxonomy,
        thresholds=dict(thresholds), threshold_rule=threshold_rule,
        abstention=abstention or Abstention(),
        files=files, flip_tta=flip_tta, localisation=localisation or Localisation(),
        body_part_pool=body_part_pool, training=dict(training or {}),
        metrics=dict(metrics or {}),
    )
    path.mkdir(parents=True, exist_ok=True)
    digests = {}
    for key, module in modules.items():
        file = network_stem(key) + ".pt"
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        torch.save(state, path / file)
        digests[file] = sha256_file(path / file)
    if ood is not None:
        ood.save(path / OOD_FILE)
        digests[OOD_FILE] = sha256_file(path / OOD_FILE)
    if onnx:
        digests.update(export_onnx(network, path, input_size=preprocessing.input_size,
                                   in_channels=preprocessing.channels))
    write_manifest(path, replace(manifest, files=digests))
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


def new_network(taxonomy: Taxonomy, *, architecture: str, width_mult: float,
                in_channels: int, body_part_pool: int = 1) -> TwoStageNetwork:
    """An untrained :class:`TwoStageNetwork`: stage 1 over ``taxonomy`` (with its input
    pooling), a :class:`~models.training.networks.FractureNet` per assessed class, every network
    built
    by :mod:`models.training.networks` with the same options."""
    return TwoStageNetwork(
        pooled_input(body_part_classifier(arch=architecture, num_classes=len(taxonomy),
                                          width_mult=width_mult, in_channels=in_channels),
                     body_part_pool),
        {c: fracture_classifier(arch=architecture, width_mult=width_mult,
                                in_channels=in_channels)
         for c in taxonomy.assessed},
        taxonomy,
    )


def build_network(manifest: BundleManifest) -> TwoStageNetwork:
    """An untrained :class:`TwoStageNetwork` of the shape ``manifest`` describes."""
    return new_network(manifest.taxonomy, architecture=manifest.architecture,
                       width_mult=manifest.width_mult,
                       in_channels=manifest.preprocessing.channels,
                       body_part_pool=manifest.body_part_pool)


def load_network(bundle: BundleInfo | Path, *,
                 device: str | torch.device = "cpu") -> tuple[BundleInfo, TwoStageNetwork]:
    """Verify a bundle (unless already verified) and build its network from the ``.pt`` files.

    Raises
    ------
    BundleError
        When the bundle is malformed, lacks ``.pt`` weights, or they do not fit.
    """
    info = bundle if isinstance(bundle, BundleInfo) else open_bundle(bundle)
    network = build_network(info.manifest)
    for key, module in _modules(network).items():
        file = info.weights(key, ".pt")
        try:
            module.load_state_dict(_load_state(file))
        except RuntimeError as exc:
            raise BundleError(f"{file.name}: weights do not fit {info.manifest.architecture} "
                              f"with width_mult={info.manifest.width_mult}: {exc}") from exc
    return info, network.to(device).eval()


def add_onnx(path: Path) -> BundleInfo:
    """``ossa bundle export-onnx``: add (or refresh) the ONNX networks of a bundle.

    The ``.pt`` weights are verified and loaded, every network is exported, and the manifest
    is rewritten with the new files' checksums (so the bundle gets a new version).
    """
    info, network = load_network(path)
    digests = export_onnx(network, info.path, input_size=info.manifest.preprocessing.input_size,
                          in_channels=info.manifest.preprocessing.channels)
    manifest = replace(info.manifest, files={**info.manifest.files, **digests})
    write_manifest(info.path, manifest)
    updated = open_bundle(info.path)
    logger.info("ONNX networks of %s written; bundle is now %s", info.version, updated.version)
    return updated
