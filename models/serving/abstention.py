"""Saying "not mine": when an image is not assessed, and the out-of-distribution score.

An image is **not assessed** (no stage-2 verdict, not counted in its study's mean) when

1. stage 1 names a class the bundle does not assess (e.g. ``OTHER``: chest, pelvis, leg...);
2. stage 1's top-class probability is below the bundle's ``min_probability``; or
3. its out-of-distribution score exceeds the bundle's ``ood_threshold``.

Softmax confidence alone does not catch out-of-scope films (a network trained on seven
classes spreads its confidence over those seven whatever it sees), hence the explicit
``OTHER`` class and the feature-space score: the Mahalanobis distance (Lee et al., NeurIPS
2018) of the image's pooled stage-1 features to the nearest assessed class's mean, in the
principal subspace of the training features, with one covariance shared by the classes.
Both thresholds are chosen on the validation split (:mod:`models.training.calibrate`). numpy only.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from models.serving.engine import EngineOutput
from models.serving.manifest import Abstention
from models.serving.results import ImagePrediction, clamp_probability
from models.serving.taxonomy import Taxonomy

#: Principal components kept for the out-of-distribution score.
OOD_COMPONENTS = 32
#: Ridge added to the shared covariance before inversion, relative to its mean variance.
_SHRINKAGE = 0.05


@dataclass(frozen=True)
class OodModel:
    """Statistics of the training features behind the out-of-distribution score.

    Parameters
    ----------
    mean : numpy.ndarray
        D, mean training feature.
    components : numpy.ndarray
        k x D, principal axes (rows).
    class_means : numpy.ndarray
        C x k, mean of each assessed class in the principal subspace.
    precision : numpy.ndarray
        k x k, inverse of the covariance shared by the classes (shrunk).
    """

    mean: NDArray[np.float32]
    components: NDArray[np.float32]
    class_means: NDArray[np.float32]
    precision: NDArray[np.float32]

    def __post_init__(self) -> None:
        d = self.mean.shape[0]
        k = self.components.shape[0]
        if self.mean.ndim != 1 or self.components.shape != (k, d):
            raise ValueError(f"ood components must be k x {d}, got {self.components.shape}")
        if self.class_means.ndim != 2 or self.class_means.shape[1] != k:
            raise ValueError(f"ood class_means must be C x {k}, got {self.class_means.shape}")
        if self.precision.shape != (k, k):
            raise ValueError(f"ood precision must be {k} x {k}, got {self.precision.shape}")

    @classmethod
    def fit(cls, features: NDArray[np.floating], classes: NDArray[np.integer], *,
            components: int = OOD_COMPONENTS) -> OodModel:
        """Fit on training features (N x D) of in-scope images and their class indices (N)."""
        x = np.asarray(features, dtype=np.float64)
        labels = np.asarray(classes)
        if x.ndim != 2 or len(x) != len(labels) or len(x) < 3:
            raise ValueError(f"features must be N x D with N >= 3 matching classes, "
                             f"got {x.shape} and {labels.shape}")
        mean = x.mean(axis=0)
        centred = x - mean
        k = max(1, min(components, x.shape[1], len(x) - 1))
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        axes = vt[:k]
        z = centred @ axes.T
        uniques = np.unique(labels)
        class_means = np.stack([z[labels == c].mean(axis=0) for c in uniques])
        residual = z - class_means[np.searchsorted(uniques, labels)]
        covariance = residual.T @ residual / max(1, len(z) - len(uniques))
        ridge = _SHRINKAGE * float(np.trace(covariance)) / k + 1e-12
        precision = np.linalg.inv(covariance + ridge * np.eye(k))
        return cls(mean.astype(np.float32), axes.astype(np.float32),
                   class_means.astype(np.float32), precision.astype(np.float32))

    def score(self, features: NDArray[np.floating]) -> NDArray[np.float32]:
        """Mahalanobis distance of each feature vector (N x D) to the nearest class mean."""
        z = (np.asarray(features, dtype=np.float32) - self.mean) @ self.components.T
        diff = z[:, None, :] - self.class_means[None, :, :]
        squared = np.einsum("nck,kl,ncl->nc", diff, self.precision, diff)
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0)).astype(np.float32)

    def save(self, path: Path) -> None:
        """Write the statistics as an uncompressed ``.npz`` (no pickles)."""
        with open(path, "wb") as f:
            np.savez(f, mean=self.mean, components=self.components,
                     class_means=self.class_means, precision=self.precision)

    @classmethod
    def load(cls, path: Path) -> OodModel:
        """Read statistics written by :meth:`save` (``ValueError`` if malformed)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: np.asarray(data[k], dtype=np.float32)
                          for k in ("mean", "components", "class_means", "precision")}
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{Path(path).name}: not valid OOD statistics ({exc})") from exc
        return cls(**arrays)


def decide(output: EngineOutput, taxonomy: Taxonomy, abstention: Abstention,
           ood: OodModel | None) -> list[ImagePrediction]:
    """Turn a routed engine output into one :class:`ImagePrediction` per image.

    Parameters
    ----------
    output : EngineOutput
        Routed by stage 1's prediction (not an oracle route).
    taxonomy : Taxonomy
        The bundle's classes.
    abstention : Abstention
        The bundle's thresholds.
    ood : OodModel or None
        The bundle's feature statistics, when it has them.
    """
    scores: Sequence[float | None]
    if ood is not None:
        scores = [float(s) for s in ood.score(output.features)]
    else:
        scores = [None] * len(output.body_part_index)
    predictions = []
    for probs, index, abnormal, score in zip(output.body_part_probabilities,
                                             output.body_part_index,
                                             output.abnormal_probability, scores, strict=True):
        name = taxonomy.names[int(index)]
        confidence = clamp_probability(probs[int(index)])
        reason = ""
        if not taxonomy.is_assessed(name):
            reason = f"body part {name} is outside the assessed scope"
        elif confidence < abstention.min_probability:
            reason = (f"body-part confidence {confidence:.2f} is below the model's minimum "
                      f"{abstention.min_probability:.2f}")
        elif (score is not None and abstention.ood_threshold is not None
              and score > abstention.ood_threshold):
            reason = (f"image is unlike the model's training images (out-of-distribution "
                      f"score {score:.1f} > {abstention.ood_threshold:.1f})")
        if reason:
            predictions.append(ImagePrediction(name, confidence, False, None, reason, score))
        else:
            predictions.append(ImagePrediction(name, confidence, True,
                                               clamp_probability(abnormal), "", score))
    return predictions
