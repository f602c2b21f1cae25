"""Scope from DICOM attributes: which radiographs Ossa does not assess, by what they show.

Body Part Examined (0018,0015) and the Anatomic Region Sequence (0008,2218) say what a
radiograph shows. Ossa's models read the upper extremity; a radiograph whose attributes name
another region (chest, pelvis, knee...) is **not assessed**, with that reason, before any
network runs. Upper-limb values, generic ones (``EXTREMITY``) and empty or unknown ones
are left to the model's own abstention (its OTHER class, confidence and out-of-distribution
checks), since those attributes are often missing or wrong.

The table holds PS3.16 Annex L defined terms of Body Part Examined (matched
case-insensitively, spaces and underscores ignored) and SNOMED CT codes of the Anatomic
Region Sequence (CID 4031), written ``SCT:<code>``. ``[scope]`` in the configuration
replaces either list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom import Dataset

#: Body Part Examined terms and SNOMED CT codes (``SCT:<code>``) outside the assessed scope.
DEFAULT_NOT_ASSESSED: tuple[str, ...] = (
    # head, neck and trunk
    "SKULL", "HEAD", "BRAIN", "FACE", "JAW", "TMJ", "SINUS", "NECK",
    "CSPINE", "TSPINE", "LSPINE", "SSPINE", "COCCYX", "SPINE", "WHOLESPINE",
    "CHEST", "THORAX", "RIB", "STERNUM", "BREAST", "HEART", "LUNG",
    "ABDOMEN", "PELVIS", "SACRUM", "SIJOINT", "HIP", "BUTTOCK", "KIDNEY", "BLADDER",
    "CHESTABDOMEN", "CHESTABDPELV", "ABDOMENPELVIS", "WHOLEBODY", "TORSO",
    # lower extremity
    "LEG", "LOWERLIMB", "LOWEREXTREMITY", "THIGH", "FEMUR", "KNEE", "PATELLA", "TIBIA",
    "FIBULA", "ANKLE", "FOOT", "HEEL", "CALCANEUS", "TOE",
    # SNOMED CT codes of the same regions (PS3.16 CID 4031)
    "SCT:89546000",  # Skull
    "SCT:69536005",  # Head
    "SCT:122494005",  # Cervical spine
    "SCT:122495006",  # Thoracic spine
    "SCT:122496007",  # Lumbar spine
    "SCT:421060004",  # Spine
    "SCT:51185008",  # Chest
    "SCT:43799004",  # Thorax
    "SCT:818981001",  # Abdomen
    "SCT:113345001",  # Abdomen (earlier code)
    "SCT:816092008",  # Pelvis
    "SCT:12921003",  # Pelvis (earlier code)
    "SCT:29836001",  # Hip
    "SCT:30021000",  # Lower leg
    "SCT:61685007",  # Lower limb
    "SCT:72696002",  # Knee
    "SCT:70258002",  # Ankle joint
    "SCT:56459004",  # Foot
)

#: Upper-limb and generic values: left to the model (listed so that they are documented).
DEFAULT_ASSESSED: tuple[str, ...] = (
    "SHOULDER", "CLAVICLE", "SCAPULA", "HUMERUS", "ARM", "UPPERARM", "ELBOW", "FOREARM",
    "WRIST", "HAND", "FINGER", "THUMB", "UPPERLIMB", "UPPEREXTREMITY", "EXTREMITY",
    "SCT:16982005",  # Shoulder region
    "SCT:85050009",  # Humerus
    "SCT:127949000",  # Elbow region
    "SCT:14975008",  # Forearm
    "SCT:74670003",  # Wrist joint
    "SCT:85562004",  # Hand
    "SCT:7569003",  # Finger
    "SCT:53120007",  # Upper limb
    "SCT:66019005",  # Limb
)

_NON_WORD = re.compile(r"[\s_\-]+")


def normalize_term(value: str) -> str:
    """A Body Part Examined value or ``SCT:<code>`` in the table's form (upper case,
    spaces, underscores and hyphens removed)."""
    value = value.strip()
    if value.upper().startswith("SCT:"):
        return "SCT:" + value[4:].strip()
    return _NON_WORD.sub("", value.upper())


@dataclass(frozen=True)
class ScopeDecision:
    """What the attributes say: ``out_of_scope`` with the attribute and value at fault."""

    out_of_scope: bool
    reason: str = ""


@dataclass(frozen=True)
class ScopeTable:
    """Body Part Examined terms and anatomic region codes Ossa does not assess.

    Parameters
    ----------
    not_assessed : iterable of str
        Terms and ``SCT:<code>`` values outside the scope.
    assessed : iterable of str
        Values left to the model; a value in both lists is a configuration error.
    """

    not_assessed: frozenset[str]
    assessed: frozenset[str]

    def __init__(self, not_assessed: Iterable[str] = DEFAULT_NOT_ASSESSED,
                 assessed: Iterable[str] = DEFAULT_ASSESSED) -> None:
        out = frozenset(normalize_term(v) for v in not_assessed)
        inside = frozenset(normalize_term(v) for v in assessed)
        both = sorted(out & inside)
        if both:
            raise ValueError(f"scope values both assessed and not assessed: {both}")
        object.__setattr__(self, "not_assessed", out)
        object.__setattr__(self, "assessed", inside)

    def decide(self, ds: Dataset) -> ScopeDecision:
        """Whether ``ds``'s Body Part Examined or Anatomic Region Sequence is out of scope.

        Either attribute naming an out-of-scope region is enough; values that are empty,
        unknown or in the assessed list leave the decision to the model.
        """
        try:
            body_part = str(ds.get("BodyPartExamined", "") or "")
        except Exception:  # a malformed value is no evidence either way
            body_part = ""
        if body_part and normalize_term(body_part) in self.not_assessed:
            return ScopeDecision(
                True, f"Body Part Examined {body_part.strip()} is outside the assessed scope "
                "(upper extremity)",
            )
        try:
            regions = list(ds.get("AnatomicRegionSequence", []) or [])
        except Exception:
            regions = []
        for item in regions:
            code = str(item.get("CodeValue", "") or "")
            scheme = str(item.get("CodingSchemeDesignator", "") or "")
            if scheme in ("SCT", "SRT") and code and f"SCT:{code}" in self.not_assessed:
                meaning = str(item.get("CodeMeaning", "") or code)
                return ScopeDecision(
                    True, f"Anatomic Region {meaning} is outside the assessed scope "
                    "(upper extremity)",
                )
        return ScopeDecision(False)
