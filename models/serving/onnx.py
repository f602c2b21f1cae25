"""ONNX Runtime backend: a bundle's ``.onnx`` networks run without PyTorch.

This is the serving path of ``ossa serve``, ``ossa predict`` and ``ossa evaluate``: it needs
only the base install (numpy, onnxruntime). :class:`OnnxRunner` implements
:class:`models.serving.engine.NetworkRunner`.
"""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from models.serving.manifest import BODY_PART, BundleError, BundleInfo, network_names

logger = logging.getLogger(__name__)


class OnnxRunner:
    """One ONNX Runtime session per network of a verified bundle.

    Parameters
    ----------
    bundle : BundleInfo
        A bundle from :func:`models.serving.manifest.open_bundle` (checksums already verified).
    threads : int
        Intra-op threads of each session (0: ONNX Runtime's default, one per core).
    """

    def __init__(self, bundle: BundleInfo, *, threads: int = 0) -> None:
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Idle intra-op threads sleep instead of spinning for a while after each call: in
        # the service the network shares the cores with decoding, captures and receiving.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._sessions: dict[str, ort.InferenceSession] = {}
        for name in network_names(bundle.manifest.taxonomy):
            path = bundle.weights(name, ".onnx")
            try:
                self._sessions[name] = ort.InferenceSession(
                    str(path), options, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # onnxruntime raises its own exception types
                raise BundleError(f"{path.name}: ONNX Runtime cannot load it ({exc})") from exc
        logger.info("ONNX Runtime %s: %d networks of %s", ort.__version__, len(self._sessions),
                    bundle.version)

    def _run(self, name: str, x: NDArray[np.float32]) -> tuple[NDArray[np.float32], ...]:
        session = self._sessions[name]
        feed = {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
        return tuple(np.asarray(o, dtype=np.float32) for o in session.run(None, feed))

    def body_part(self, x: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Stage-1 logits (N x K) and pooled features (N x D)."""
        logits, features = self._run(BODY_PART, x)
        return logits, features

    def abnormal(self, name: str,
                 x: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Stage-2 logits (N x 2) and fracture maps (N x h x w) of class ``name``."""
        logits, fmap = self._run(name, x)
        return logits, fmap
