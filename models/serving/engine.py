"""Two-stage routing in numpy, shared by the ONNX Runtime and the PyTorch backends.

A backend is a :class:`NetworkRunner`: it runs the stage-1 network (logits and pooled
features) and any stage-2 network (logits and fracture probability map) on a batch. The
:class:`TwoStageEngine` does the rest once for both: batching, flip averaging, softmax,
routing each image to the stage-2 network of the class stage 1 names (El-Saadawy et al.,
AICV 2020) and the image score (:func:`image_scores`). It imports neither torch nor
onnxruntime.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

import numpy as np
from numpy.typing import NDArray

from models.serving.taxonomy import Taxonomy

#: Backends that run a bundle's networks: ONNX Runtime (serving, no PyTorch) and PyTorch.
Backend = Literal["onnxruntime", "torch"]
BACKENDS: tuple[str, ...] = get_args(Backend)


class NetworkRunner(Protocol):
    """Runs a bundle's networks on a preprocessed float32 batch (N x C x S x S)."""

    def body_part(self, x: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Stage-1 logits (N x K) and pooled features (N x D)."""
        ...

    def abnormal(self, name: str,
                 x: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Stage-2 logits (N x 2) and fracture maps (N x h x w) of class ``name``."""
        ...


def softmax(logits: NDArray[np.floating]) -> NDArray[np.float32]:
    """Row-wise softmax, numerically stable."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class EngineOutput:
    """Raw two-stage output for N images (arrays, in input order).

    Parameters
    ----------
    body_part_probabilities : numpy.ndarray
        N x K stage-1 softmax (flip-averaged).
    body_part_index : numpy.ndarray
        N, the class each image was routed by (argmax, or the forced route).
    features : numpy.ndarray
        N x D pooled stage-1 features (flip-averaged).
    abnormal_probability : numpy.ndarray
        N, stage-2 probability of abnormality (the bundle's image score); NaN where the routed
        class is not assessed.
    maps : numpy.ndarray
        N x h x w fracture probability maps (flip-averaged, in the input's orientation); NaN
        where the routed class is not assessed. Empty (N x 0 x 0) when not asked for.
    scores : mapping of str to numpy.ndarray
        Every image score (:data:`~models.serving.manifest.IMAGE_SCORES`) of each image, for
        evaluation; NaN where not assessed.
    """

    body_part_probabilities: NDArray[np.float32]
    body_part_index: NDArray[np.int64]
    features: NDArray[np.float32]
    abnormal_probability: NDArray[np.float32]
    maps: NDArray[np.float32]
    scores: dict[str, NDArray[np.float32]]


def image_scores(pooled: NDArray[np.float32], maps: NDArray[np.float32], *, top_k: int
                 ) -> dict[str, NDArray[np.float32]]:
    """The image scores of stage-2 outputs: ``pooled`` (softmax of the pooled classifier,
    N), ``map`` (mean of each map's ``top_k`` highest cells) and ``blend`` (their mean)."""
    flat = maps.reshape(len(maps), -1)
    k = min(top_k, flat.shape[1])
    top = np.sort(flat, axis=1)[:, -k:].mean(axis=1).astype(np.float32)
    return {"pooled": pooled, "map": top, "blend": ((pooled + top) / 2).astype(np.float32)}


class TwoStageEngine:
    """Route a batch through both stages of a bundle.

    Parameters
    ----------
    runner : NetworkRunner
        The backend.
    taxonomy : Taxonomy
        Class order of stage 1 and which classes have a stage-2 network.
    flip_tta : bool
        Average both stages over each image and its mirror image.
    batch_size : int
        Images per network call (each doubled by ``flip_tta``).
    image_score : str
        Which of :func:`image_scores` is the image's probability of abnormality.
    top_k : int
        Cells averaged by the ``map`` score.
    """

    def __init__(self, runner: NetworkRunner, taxonomy: Taxonomy, *, flip_tta: bool,
                 batch_size: int = 32, image_score: str = "pooled", top_k: int = 4) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if image_score not in ("pooled", "map", "blend"):
            raise ValueError(f"image_score must be pooled, map or blend, got {image_score!r}")
        self.runner = runner
        self.taxonomy = taxonomy
        self.flip_tta = flip_tta
        self.batch_size = batch_size
        self.image_score = image_score
        self.top_k = top_k

    def _views(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.concatenate([x, x[..., ::-1]]) if self.flip_tta else x

    def _merge(self, out: NDArray[np.float32], n: int, *, mirror: bool = False
               ) -> NDArray[np.float32]:
        """Average the original and mirrored halves (un-mirroring spatial maps)."""
        if not self.flip_tta:
            return out
        second = out[n:, ..., ::-1] if mirror else out[n:]
        return ((out[:n] + second) / 2).astype(np.float32)

    def _stage1(self, x: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        n = x.shape[0]
        logits, features = self.runner.body_part(self._views(x))
        return self._merge(softmax(logits), n), self._merge(features, n)

    def _stage2(self, name: str, x: NDArray[np.float32]
                ) -> tuple[dict[str, NDArray[np.float32]], NDArray[np.float32]]:
        n = x.shape[0]
        logits, fmap = self.runner.abnormal(name, self._views(x))
        pooled = self._merge(softmax(logits)[:, 1], n)
        merged = self._merge(fmap, n, mirror=True)
        return image_scores(pooled, merged, top_k=self.top_k), merged

    def body_parts(self, images: NDArray[np.float32]
                   ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Stage 1 alone: softmax (N x K) and pooled features (N x D) of preprocessed inputs."""
        n = images.shape[0]
        if n == 0:
            raise ValueError("images must hold at least one image")
        probs, feats = [], []
        for start in range(0, n, self.batch_size):
            p, f = self._stage1(np.asarray(images[start : start + self.batch_size], np.float32))
            probs.append(p)
            feats.append(f)
        return np.concatenate(probs), np.concatenate(feats)

    def abnormal(self, images: NDArray[np.float32],
                 route: Sequence[int] | NDArray[np.integer], *, maps: bool = False
                 ) -> tuple[dict[str, NDArray[np.float32]], NDArray[np.float32]]:
        """Stage 2 alone: each image through the network of the class index ``route`` names.

        Returns every image score (:func:`image_scores`; N each, NaN where the class is not
        assessed) and, when ``maps``, the fracture maps (N x h x w; else N x 0 x 0).
        """
        n = images.shape[0]
        if len(route) != n:
            raise ValueError(f"route must hold one class index per image ({n}), "
                             f"got {len(route)}")
        index = np.asarray(route, dtype=np.int64)
        if n and not ((index >= 0) & (index < len(self.taxonomy))).all():
            raise ValueError(f"route must hold class indices in [0, {len(self.taxonomy)})")
        scores = {key: np.full(n, np.nan, dtype=np.float32) for key in ("pooled", "map", "blend")}
        map_out: NDArray[np.float32] | None = None
        for k, name in enumerate(self.taxonomy.names):
            if not self.taxonomy.is_assessed(name):
                continue
            rows = np.flatnonzero(index == k)
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                chunk_scores, fmap = self._stage2(name, np.asarray(images[chunk], np.float32))
                for key, value in chunk_scores.items():
                    scores[key][chunk] = value
                if maps:
                    if map_out is None:
                        map_out = np.full((n, *fmap.shape[1:]), np.nan, dtype=np.float32)
                    map_out[chunk] = fmap
        if map_out is None:
            map_out = np.zeros((n, 0, 0), dtype=np.float32)
        return scores, map_out

    def predict(self, images: NDArray[np.float32], *,
                route: Sequence[int] | NDArray[np.integer] | None = None,
                maps: bool = False) -> EngineOutput:
        """Run both stages on preprocessed inputs (N x C x S x S).

        Parameters
        ----------
        images : numpy.ndarray
            float32 network inputs.
        route : sequence of int, optional
            Force each image to the stage-2 network of this class index instead of stage 1's
            prediction (the "oracle routing" of an evaluation, with the true class).
        maps : bool
            Also return the fracture maps.
        """
        probabilities, features = self.body_parts(images)
        index = (np.asarray(route, dtype=np.int64) if route is not None
                 else probabilities.argmax(axis=1).astype(np.int64))
        scores, fmaps = self.abnormal(images, index, maps=maps)
        return EngineOutput(probabilities, index, features, scores[self.image_score], fmaps,
                            scores)
