"""Inference with a model bundle: images in, immutable predictions out.

Images are float32 2-D arrays in [0, 1] with 1 = bright bone (PNG/255, or what
``dicom_io.pixels`` returns). Preprocessing comes from the bundle's manifest, never from here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.bundle import LoadedBundle, load_bundle
from models.enhance import Preprocessing, preprocess
from models.networks import TwoStageOutput
from models.results import AlgorithmInfo, ImagePrediction, StudyPrediction

logger = logging.getLogger(__name__)

#: Name reported as the algorithm (DICOM TID 4019).
ALGORITHM_NAME = "Ossa two-stage MobileNetV2"


def _probability(value: float) -> float:
    """Clamp float32 rounding (e.g. 1.0000001) back into [0, 1]."""
    return min(max(float(value), 0.0), 1.0)


def image_predictions(output: TwoStageOutput, bone_types: Sequence[str]) -> list[ImagePrediction]:
    """One :class:`ImagePrediction` per image of a batched network output, in order.

    Parameters
    ----------
    output : TwoStageOutput
        Output of :meth:`models.networks.TwoStageNetwork.predict`.
    bone_types : sequence of str
        Class order of the bone-type network (the bundle's ``bone_types``).
    """
    return [
        ImagePrediction(
            bone=bone_types[int(idx)],
            bone_probability=_probability(probs[int(idx)]),
            abnormal_probability=_probability(abnormal),
        )
        for probs, idx, abnormal in zip(
            output.bone_probabilities, output.bone_index, output.abnormal_probability,
            strict=True,
        )
    ]


class TwoStageClassifier:
    """Bone type (stage 1) then per-bone abnormality (stage 2), from a verified bundle.

    Parameters
    ----------
    bundle : LoadedBundle
        A bundle returned by :func:`models.bundle.load_bundle`.
    device : str
        Torch device to run on.
    batch_size : int
        Images per forward pass.
    """

    def __init__(self, bundle: LoadedBundle, *, device: str = "cpu", batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._bundle = bundle
        self._device = torch.device(device)
        self._batch_size = batch_size
        self._network = bundle.network.to(self._device).eval()
        self._algorithm = AlgorithmInfo(name=ALGORITHM_NAME, version=bundle.version)

    @classmethod
    def from_bundle(cls, path: Path, *, device: str = "cpu") -> TwoStageClassifier:
        """Load and verify the bundle at ``path`` (raises ``BundleError``)."""
        bundle = load_bundle(path, device=device)
        logger.info("loaded bundle %s", bundle.version)
        return cls(bundle, device=device)

    @property
    def algorithm(self) -> AlgorithmInfo:
        """Name and version (bundle name + short manifest hash)."""
        return self._algorithm

    @property
    def bundle(self) -> LoadedBundle:
        """The bundle this classifier runs."""
        return self._bundle

    @property
    def preprocessing(self) -> Preprocessing:
        """Preprocessing from the bundle's manifest."""
        return self._bundle.manifest.preprocessing

    @property
    def threshold(self) -> float:
        """Study-level decision threshold from the bundle's manifest."""
        return self._bundle.manifest.threshold

    def predict_tensors(self, batch: torch.Tensor) -> TwoStageOutput:
        """Run both stages on already preprocessed inputs (N x C x S x S)."""
        return self._network.predict(batch, batch_size=self._batch_size, device=self._device)

    def predict_images(self, images: Sequence[np.ndarray]) -> list[ImagePrediction]:
        """Predict each image's bone type and abnormality probability.

        Parameters
        ----------
        images : sequence of numpy.ndarray
            float 2-D arrays in [0, 1], 1 = bright bone.

        Returns
        -------
        list of ImagePrediction
            One per image, in order.

        Raises
        ------
        TypeError, ValueError
            When an image is not a 2-D float array in [0, 1] (the message names its index).
        """
        if len(images) == 0:
            return []
        tensors = []
        for i, image in enumerate(images):
            try:
                tensors.append(preprocess(image, self.preprocessing))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"images[{i}]: {exc}") from exc
        out = self.predict_tensors(torch.stack(tensors))
        return image_predictions(out, self._bundle.manifest.bone_types)

    def predict_study(self, images: Sequence[np.ndarray]) -> StudyPrediction:
        """Predict every image of one study; the study probability is their mean.

        Raises
        ------
        ValueError
            When ``images`` is empty or an image is invalid.
        """
        if len(images) == 0:
            raise ValueError("images must hold at least one image")
        return StudyPrediction(
            images=tuple(self.predict_images(images)),
            threshold=self.threshold,
            algorithm=self.algorithm,
        )
