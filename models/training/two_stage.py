"""The two-stage network in PyTorch: what training builds, bundles store and ONNX exports.

:class:`ServingHead` wraps a network so that one forward pass returns, with the logits, what
serving needs without gradients: the pooled features (stage 1, for the out-of-distribution
score) or the fracture probability map (stage 2, a :class:`models.training.networks.FractureNet`:
the
image score and the findings). The same wrapper is exported to ONNX and run by the torch
backend, so both backends compute the same graph; routing, flip averaging, softmax and the
image score happen once, in numpy (:mod:`models.serving.engine`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from numpy.typing import NDArray
from torch import nn

from models.serving.taxonomy import Taxonomy
from models.training.networks import FractureNet

#: Output names of the stage-1 network, in order.
BODY_PART_OUTPUTS: tuple[str, str] = ("logits", "features")
#: Output names of a stage-2 network, in order.
ABNORMAL_OUTPUTS: tuple[str, str] = ("logits", "map")
#: Input name of every network.
INPUT_NAME = "image"


class ServingHead(nn.Module):
    """A network's serving outputs: its logits and the pooled features or the fracture map.

    Parameters
    ----------
    model : torch.nn.Module
        ``"features"``: a torchvision MobileNet (``features`` + ``classifier``);
        ``"map"``: a :class:`models.training.networks.FractureNet`.
    output : {"features", "map"}
        ``"features"``: the globally pooled last feature map (N x D).
        ``"map"``: the fracture probability of every cell (sigmoid of the head, N x h x w).
    """

    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        if output not in ("features", "map"):
            raise ValueError(f"output must be 'features' or 'map', got {output!r}")
        if output == "map" and not isinstance(model, FractureNet):
            raise ValueError("output 'map' needs a FractureNet")
        trunk, classifier = getattr(model, "features", None), getattr(model, "classifier", None)
        if not isinstance(trunk, nn.Module) or not isinstance(classifier, nn.Module):
            raise ValueError("model must have 'features' and 'classifier' modules "
                             "(a torchvision MobileNet)")
        self.model = model
        self.trunk = trunk
        self.classifier = classifier
        self.output = output

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.output == "map":
            logits, fmap = self.model(x)
            return logits, torch.sigmoid(fmap)
        pooled = F.adaptive_avg_pool2d(self.trunk(x), 1).flatten(1)
        return self.classifier(pooled), pooled


class TwoStageNetwork(nn.Module):
    """Body-part network plus one abnormality network per assessed class.

    Parameters
    ----------
    body_part : torch.nn.Module
        Stage 1: maps a batch to ``len(taxonomy)`` logits (a torchvision MobileNet).
    abnormal : mapping of str to FractureNet
        Stage 2: one network (2 logits, class 1 = abnormal, and a fracture map) per assessed
        class of ``taxonomy``.
    taxonomy : Taxonomy
        Class order of ``body_part``'s logits and which classes are assessed.
    """

    def __init__(self, body_part: nn.Module, abnormal: Mapping[str, nn.Module],
                 taxonomy: Taxonomy) -> None:
        super().__init__()
        if set(abnormal) != set(taxonomy.assessed):
            raise ValueError(f"abnormal must hold one network per assessed class "
                             f"{list(taxonomy.assessed)}, got {sorted(abnormal)}")
        self.taxonomy = taxonomy
        self.body_part = body_part
        self.abnormal = nn.ModuleDict({name: abnormal[name] for name in taxonomy.assessed})

    def heads(self) -> dict[str, ServingHead]:
        """Every network wrapped for serving, keyed ``"body_part"`` or the class name."""
        heads = {"body_part": ServingHead(self.body_part, "features")}
        heads.update({name: ServingHead(net, "map") for name, net in self.abnormal.items()})
        return heads


class TorchRunner:
    """The :class:`models.serving.engine.NetworkRunner` of a :class:`TwoStageNetwork` (torch
    backend).

    Parameters
    ----------
    network : TwoStageNetwork
        Put in eval mode; never trained through this runner.
    device : torch.device or str
        Device the network is on.
    """

    def __init__(self, network: TwoStageNetwork, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._heads = {k: h.to(self.device).eval() for k, h in network.heads().items()}

    def _run(self, key: str, x: NDArray[np.float32]) -> tuple[NDArray[np.float32], ...]:
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            outputs = self._heads[key](batch)
        return tuple(o.float().cpu().numpy() for o in outputs)

    def body_part(self, x: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Stage-1 logits (N x K) and pooled features (N x D)."""
        logits, features = self._run("body_part", x)
        return logits, features

    def abnormal(self, name: str,
                 x: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Stage-2 logits (N x 2) and fracture maps (N x h x w) of class ``name``."""
        logits, fmap = self._run(name, x)
        return logits, fmap
