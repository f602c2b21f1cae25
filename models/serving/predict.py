"""Inference with a model bundle: images in, immutable predictions out.

Images are float32 2-D arrays in [0, 1] with 1 = bright bone (PNG/255, or what
``dicom_io.pixels`` returns). Preprocessing comes from the bundle's manifest, never from here.
Two backends run the networks: ONNX Runtime (``"onnxruntime"``, the default; the base install,
no PyTorch) and PyTorch (``"torch"``, with the ``[train]`` extra). Either way routing,
abstention and the study rule are the same code (:mod:`models.serving.engine`,
:mod:`models.serving.abstention`, :mod:`models.serving.results`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from models.serving.abstention import OodModel, decide
from models.serving.engine import BACKENDS, EngineOutput, NetworkRunner, TwoStageEngine
from models.serving.enhance import InputGeometry, Preprocessing, preprocess_with_geometry
from models.serving.findings import image_findings
from models.serving.manifest import OOD_FILE, BundleError, BundleInfo, Localisation, open_bundle
from models.serving.results import AlgorithmInfo, ImagePrediction, StudyPrediction
from models.serving.taxonomy import Taxonomy

logger = logging.getLogger(__name__)

#: Name reported as the algorithm (DICOM TID 4019).
ALGORITHM_NAME = "Ossa two-stage MobileNet"


def make_runner(bundle: BundleInfo, *, backend: str = "onnxruntime", threads: int = 0,
                device: str = "cpu") -> NetworkRunner:
    """The backend that runs ``bundle``'s networks (torch is imported only for ``"torch"``)."""
    if backend == "onnxruntime":
        from models.serving.onnx import OnnxRunner

        return OnnxRunner(bundle, threads=threads)
    if backend == "torch":
        try:
            import torch

            from models.training.bundle import load_network
            from models.training.two_stage import TorchRunner
        except ImportError as exc:
            raise BundleError(f"backend 'torch' needs PyTorch: pip install 'ossa[train]' "
                              f"({exc})") from exc
        if threads:
            torch.set_num_threads(threads)
        _, network = load_network(bundle, device=device)
        return TorchRunner(network, device)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


class TwoStageClassifier:
    """Body part (stage 1), abstention, then per-class abnormality (stage 2), from a bundle.

    Parameters
    ----------
    bundle : BundleInfo
        A verified bundle (:func:`models.serving.manifest.open_bundle`).
    runner : NetworkRunner
        The backend running its networks (:func:`make_runner`).
    batch_size : int
        Images per network call.
    workers : int
        Images preprocessed at once (:meth:`preprocess`; its array work releases the GIL),
        >= 1.
    """

    def __init__(self, bundle: BundleInfo, runner: NetworkRunner, *,
                 batch_size: int = 32, workers: int = 1) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        self._workers = workers
        self._bundle = bundle
        manifest = bundle.manifest
        self._engine = TwoStageEngine(runner, manifest.taxonomy, flip_tta=manifest.flip_tta,
                                      batch_size=batch_size,
                                      image_score=manifest.localisation.image_score,
                                      top_k=manifest.localisation.top_k)
        self._ood = OodModel.load(bundle.file(OOD_FILE)) if OOD_FILE in manifest.files else None
        self._algorithm = AlgorithmInfo(name=ALGORITHM_NAME, version=bundle.version)

    @classmethod
    def from_bundle(cls, path: Path, *, backend: str = "onnxruntime", threads: int = 0,
                    device: str = "cpu", batch_size: int = 32) -> TwoStageClassifier:
        """Verify the bundle at ``path`` and load it for ``backend`` (raises ``BundleError``).

        ``threads``: the backend's intra-op threads and the images preprocessed at once (0:
        one per usable core)."""
        bundle = open_bundle(path)
        runner = make_runner(bundle, backend=backend, threads=threads, device=device)
        logger.info("loaded bundle %s (%s)", bundle.version, backend)
        workers = threads or len(os.sched_getaffinity(0))
        return cls(bundle, runner, batch_size=batch_size, workers=workers)

    @property
    def algorithm(self) -> AlgorithmInfo:
        """Name and version (bundle name + short manifest hash)."""
        return self._algorithm

    @property
    def bundle(self) -> BundleInfo:
        """The verified bundle this classifier runs."""
        return self._bundle

    @property
    def taxonomy(self) -> Taxonomy:
        """The bundle's classes and their codes."""
        return self._bundle.manifest.taxonomy

    @property
    def preprocessing(self) -> Preprocessing:
        """Preprocessing from the bundle's manifest."""
        return self._bundle.manifest.preprocessing

    @property
    def thresholds(self) -> Mapping[str, float]:
        """Operating threshold of each assessed class, from the manifest."""
        return self._bundle.manifest.thresholds

    @property
    def engine(self) -> TwoStageEngine:
        """The routing engine (for evaluation: oracle routes, class-activation maps)."""
        return self._engine

    @property
    def localisation(self) -> Localisation:
        """Image score and findings settings, from the manifest."""
        return self._bundle.manifest.localisation

    @property
    def reports_findings(self) -> bool:
        """Whether the bundle locates findings (its fracture maps were trained with boxes)."""
        return bool(self.localisation.finding_thresholds)

    def preprocess(self, images: Sequence[NDArray[np.floating]]
                   ) -> tuple[NDArray[np.float32], list[InputGeometry]]:
        """Network inputs (N x C x S x S) of ``images`` and each one's geometry; errors name
        the image's index. Up to ``workers`` images are preprocessed at once."""
        params = self.preprocessing

        def one(i: int) -> tuple[NDArray[np.float32], InputGeometry]:
            try:
                return preprocess_with_geometry(images[i], params)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"images[{i}]: {exc}") from exc

        workers = min(self._workers, len(images))
        if workers > 1:
            with ThreadPoolExecutor(workers, thread_name_prefix="preprocess") as pool:
                done = list(pool.map(one, range(len(images))))
        else:
            done = [one(i) for i in range(len(images))]
        return np.stack([array for array, _ in done]), [geometry for _, geometry in done]

    def predict_arrays(self, inputs: NDArray[np.float32],
                       geometries: Sequence[InputGeometry] | None = None, *,
                       maps: bool = False) -> tuple[EngineOutput, list[ImagePrediction]]:
        """Run preprocessed inputs; the raw output and one prediction per image.

        With ``geometries`` (from :meth:`preprocess`) and a bundle that reports findings, each
        prediction carries its findings in the pixels of the image given to
        :meth:`preprocess`.
        """
        locate = geometries is not None and self.reports_findings
        output = self._engine.predict(inputs, maps=maps or locate)
        manifest = self._bundle.manifest
        predictions = decide(output, manifest.taxonomy, manifest.abstention, self._ood)
        if locate:
            assert geometries is not None
            found = image_findings(
                output.maps, geometries, [p.abnormal_probability for p in predictions],
                [p.body_part for p in predictions], operating=dict(self.thresholds),
                finding_thresholds=dict(self.localisation.finding_thresholds),
                stride=self.localisation.stride, max_findings=self.localisation.max_findings)
            predictions = [replace(p, findings=f) if f else p
                           for p, f in zip(predictions, found, strict=True)]
        return output, predictions

    def predict_images(self, images: Sequence[NDArray[np.floating]]) -> list[ImagePrediction]:
        """Predict each image's body part, whether it is assessed, its abnormality and its
        findings.

        Parameters
        ----------
        images : sequence of numpy.ndarray
            float 2-D arrays in [0, 1], 1 = bright bone.

        Raises
        ------
        TypeError, ValueError
            When an image is not a 2-D float array in [0, 1] (the message names its index).
        """
        if len(images) == 0:
            return []
        return self.predict_arrays(*self.preprocess(images))[1]

    def study(self, images: Sequence[ImagePrediction]) -> StudyPrediction:
        """The study result of some image predictions (mean of the assessed images)."""
        return StudyPrediction(images=tuple(images), thresholds=tuple(self.thresholds.items()),
                               algorithm=self.algorithm)

    def predict_study(self, images: Sequence[NDArray[np.floating]]) -> StudyPrediction:
        """Predict every image of one study (at least one image)."""
        if len(images) == 0:
            raise ValueError("images must hold at least one image")
        return self.study(self.predict_images(images))

    def predict_studies(self, studies: Sequence[Sequence[NDArray[np.floating]]]
                        ) -> list[StudyPrediction]:
        """Predict several studies in shared batches (images of all studies together)."""
        if any(len(s) == 0 for s in studies):
            raise ValueError("every study must hold at least one image")
        flat = [image for study in studies for image in study]
        predictions = self.predict_images(flat)
        results, start = [], 0
        for study in studies:
            results.append(self.study(predictions[start : start + len(study)]))
            start += len(study)
        return results
