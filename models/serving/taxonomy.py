"""The classes a bundle's stage-1 network names, their codes, and which of them are assessed.

A bundle's manifest holds its own taxonomy, so that the SR writer takes each class's finding
site (a SNOMED CT code, DICOM PS3.16 CID 4031 "Common Anatomic Regions" where one fits) from the
model it reports on, never from a fixed table. A class that is not *assessed* is recognised by
stage 1 but has no stage-2 network: its images are reported "not assessed" (out of scope).

The default, :data:`MURA_TAXONOMY`, is the paper's: MURA's seven upper-extremity bone types, all
assessed, plus ``OTHER`` (chest, pelvis, leg, skull, spine, abdomen...), not assessed.

This module imports neither torch nor pydicom: the serving path and the phantom use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,31}\Z")


@dataclass(frozen=True)
class CodedConcept:
    """A (value, scheme, meaning) triplet as DICOM PS3.3 8.8 Code Sequence Macro uses it.

    Parameters
    ----------
    value : str
        Code Value, e.g. ``"74670003"``.
    scheme : str
        Coding Scheme Designator, e.g. ``"SCT"``.
    meaning : str
        Code Meaning, e.g. ``"Wrist joint"``.
    """

    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        for key in ("value", "scheme", "meaning"):
            item = getattr(self, key)
            if not isinstance(item, str) or not item.strip() or len(item) > 64:
                raise ValueError(f"code.{key} must be a non-empty string of at most 64 "
                                 f"characters, got {item!r}")

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"value": self.value, "scheme": self.scheme, "meaning": self.meaning}

    @classmethod
    def from_dict(cls, data: Any) -> CodedConcept:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` naming the bad key."""
        if not isinstance(data, Mapping) or set(data) != {"value", "scheme", "meaning"}:
            raise ValueError("code must be an object with exactly value, scheme and meaning")
        return cls(value=data["value"], scheme=data["scheme"], meaning=data["meaning"])


@dataclass(frozen=True)
class BodyPartClass:
    """One class of the stage-1 (body part) network.

    Parameters
    ----------
    name : str
        Upper-case identifier, e.g. ``"WRIST"`` (also MURA's ``XR_WRIST`` folder name).
    code : CodedConcept
        Anatomic region, reported as the SR's Finding Site.
    assessed : bool
        Whether images of this class get a stage-2 (normal/abnormal) verdict.
    """

    name: str
    code: CodedConcept
    assessed: bool

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"name must be 1-32 upper-case letters, digits or '_' starting "
                             f"with a letter, got {self.name!r}")
        if not isinstance(self.code, CodedConcept):
            raise ValueError(f"code of class {self.name} must be a CodedConcept")
        if not isinstance(self.assessed, bool):
            raise ValueError(f"assessed of class {self.name} must be a bool, "
                             f"got {self.assessed!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored in a manifest."""
        return {"name": self.name, "code": self.code.to_dict(), "assessed": self.assessed}


@dataclass(frozen=True)
class Taxonomy:
    """The ordered classes of a stage-1 network (the order of its outputs).

    Parameters
    ----------
    classes : tuple of BodyPartClass
        In network output order; names unique; at least one assessed class.
    """

    classes: tuple[BodyPartClass, ...]

    def __post_init__(self) -> None:
        classes = tuple(self.classes)
        object.__setattr__(self, "classes", classes)
        if len(classes) < 2:
            raise ValueError(f"taxonomy.classes must hold at least 2 classes, got {len(classes)}")
        if not all(isinstance(c, BodyPartClass) for c in classes):
            raise ValueError("taxonomy.classes must be BodyPartClass objects")
        names = [c.name for c in classes]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"taxonomy.classes: names must be unique, repeated: {repeated}")
        if not any(c.assessed for c in classes):
            raise ValueError("taxonomy.classes: at least one class must be assessed")

    def __len__(self) -> int:
        return len(self.classes)

    def __iter__(self) -> Iterator[BodyPartClass]:
        return iter(self.classes)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    @property
    def names(self) -> tuple[str, ...]:
        """Class names in output order."""
        return tuple(c.name for c in self.classes)

    @property
    def assessed(self) -> tuple[str, ...]:
        """Names of the assessed classes (those with a stage-2 network), in output order."""
        return tuple(c.name for c in self.classes if c.assessed)

    def index(self, name: str) -> int:
        """Output index of class ``name`` (``ValueError`` if unknown)."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"unknown class {name!r}; the taxonomy has {self.names}") from None

    def get(self, name: str) -> BodyPartClass:
        """The class called ``name`` (``ValueError`` if unknown)."""
        return self.classes[self.index(name)]

    def is_assessed(self, name: str) -> bool:
        """Whether class ``name`` gets a stage-2 verdict."""
        return self.get(name).assessed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored in a manifest's ``taxonomy`` key."""
        return {"classes": [c.to_dict() for c in self.classes]}

    @classmethod
    def from_dict(cls, data: Any) -> Taxonomy:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` naming the bad entry."""
        if not isinstance(data, Mapping) or not isinstance(data.get("classes"), list):
            raise ValueError("taxonomy must be an object with a 'classes' list")
        classes = []
        for i, item in enumerate(data["classes"]):
            if not isinstance(item, Mapping) or set(item) != {"name", "code", "assessed"}:
                raise ValueError(f"taxonomy.classes[{i}] must have exactly name, code, assessed")
            try:
                code = CodedConcept.from_dict(item["code"])
                classes.append(BodyPartClass(item["name"], code, item["assessed"]))
            except ValueError as exc:
                raise ValueError(f"taxonomy.classes[{i}]: {exc}") from exc
        return cls(tuple(classes))

    @classmethod
    def from_names(cls, names: Sequence[str], base: Taxonomy | None = None) -> Taxonomy:
        """The classes of ``base`` (default :data:`MURA_TAXONOMY`) named, in ``names`` order."""
        base = base or MURA_TAXONOMY
        return cls(tuple(base.get(n) for n in names))


def sct(value: str, meaning: str) -> CodedConcept:
    """A SNOMED CT concept (Coding Scheme Designator ``SCT``)."""
    return CodedConcept(value, "SCT", meaning)


#: The paper's taxonomy: MURA's seven bone types (alphabetical, MURA's folder order), all
#: assessed, then OTHER (out-of-scope anatomy), not assessed. Codes from PS3.16 CID 4031.
MURA_TAXONOMY = Taxonomy((
    BodyPartClass("ELBOW", sct("16953009", "Elbow joint"), True),
    BodyPartClass("FINGER", sct("7569003", "Finger"), True),
    BodyPartClass("FOREARM", sct("14975008", "Forearm"), True),
    BodyPartClass("HAND", sct("85562004", "Hand"), True),
    BodyPartClass("HUMERUS", sct("85050009", "Humerus"), True),
    BodyPartClass("SHOULDER", sct("16982005", "Shoulder"), True),
    BodyPartClass("WRIST", sct("74670003", "Wrist joint"), True),
    BodyPartClass("OTHER", sct("38266002", "Entire body"), False),
))

#: MURA-v1.1's seven bone types (the assessed classes of :data:`MURA_TAXONOMY`).
MURA_BONE_TYPES: tuple[str, ...] = MURA_TAXONOMY.assessed
