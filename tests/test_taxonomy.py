"""Tests of the stage-1 taxonomy (models.serving.taxonomy)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from pydicom.sr.codedict import codes

from models.serving.taxonomy import (
    MURA_BONE_TYPES,
    MURA_TAXONOMY,
    BodyPartClass,
    CodedConcept,
    Taxonomy,
)

#: MURA class -> keyword of the same concept in pydicom's SNOMED CT dictionary.
PYDICOM_KEYWORDS = {
    "ELBOW": "ElbowJoint",
    "FINGER": "Finger",
    "FOREARM": "Forearm",
    "HAND": "Hand",
    "HUMERUS": "Humerus",
    "SHOULDER": "Shoulder",
    "WRIST": "WristJoint",
}


def _code(value: str = "74670003", meaning: str = "Wrist joint") -> CodedConcept:
    return CodedConcept(value, "SCT", meaning)


def _small() -> Taxonomy:
    return Taxonomy((
        BodyPartClass("WRIST", _code(), True),
        BodyPartClass("OTHER", _code("38266002", "Entire body"), False),
    ))


# --- MURA_TAXONOMY ---------------------------------------------------------------------------


def test_mura_taxonomy_has_seven_assessed_bone_types_then_other() -> None:
    assert len(MURA_TAXONOMY) == 8
    assert MURA_TAXONOMY.names == ("ELBOW", "FINGER", "FOREARM", "HAND", "HUMERUS",
                                   "SHOULDER", "WRIST", "OTHER")
    assert MURA_TAXONOMY.assessed == MURA_TAXONOMY.names[:7]
    assert MURA_BONE_TYPES == MURA_TAXONOMY.assessed
    assert not MURA_TAXONOMY.is_assessed("OTHER")
    assert all(MURA_TAXONOMY.is_assessed(n) for n in MURA_BONE_TYPES)


@pytest.mark.parametrize(("name", "keyword"), sorted(PYDICOM_KEYWORDS.items()))
def test_mura_codes_match_pydicom_snomed_dictionary(name: str, keyword: str) -> None:
    expected = getattr(codes.SCT, keyword)
    code = MURA_TAXONOMY.get(name).code
    assert (code.value, code.scheme, code.meaning) == (
        expected.value, expected.scheme_designator, expected.meaning
    )


def test_other_code_is_snomed_entire_body() -> None:
    code = MURA_TAXONOMY.get("OTHER").code
    assert (code.value, code.scheme) == (codes.SCT.EntireBody.value, "SCT")


def test_mura_codes_are_distinct() -> None:
    assert len({c.code.value for c in MURA_TAXONOMY}) == len(MURA_TAXONOMY)


# --- lookups ---------------------------------------------------------------------------------


def test_lookups() -> None:
    assert MURA_TAXONOMY.index("ELBOW") == 0
    assert MURA_TAXONOMY.index("OTHER") == 7
    assert MURA_TAXONOMY.get("HAND").name == "HAND"
    assert "WRIST" in MURA_TAXONOMY
    assert "KNEE" not in MURA_TAXONOMY
    assert [c.name for c in MURA_TAXONOMY] == list(MURA_TAXONOMY.names)


@pytest.mark.parametrize("method", ["index", "get", "is_assessed"])
def test_unknown_class_raises_naming_it(method: str) -> None:
    with pytest.raises(ValueError, match="unknown class 'KNEE'"):
        getattr(MURA_TAXONOMY, method)("KNEE")


def test_taxonomy_is_immutable_and_classes_become_a_tuple() -> None:
    taxonomy = Taxonomy([BodyPartClass("WRIST", _code(), True),  # type: ignore[arg-type]
                         BodyPartClass("OTHER", _code(), False)])
    assert isinstance(taxonomy.classes, tuple)
    with pytest.raises(AttributeError):
        taxonomy.classes = ()  # type: ignore[misc]


# --- to_dict / from_dict ---------------------------------------------------------------------


def test_round_trip_through_json() -> None:
    data = json.loads(json.dumps(MURA_TAXONOMY.to_dict()))
    assert Taxonomy.from_dict(data) == MURA_TAXONOMY
    assert data["classes"][6] == {
        "name": "WRIST",
        "code": {"value": "74670003", "scheme": "SCT", "meaning": "Wrist joint"},
        "assessed": True,
    }
    assert data["classes"][7]["assessed"] is False


def test_round_trip_keeps_order_and_assessed_flags() -> None:
    taxonomy = Taxonomy.from_names(["OTHER", "WRIST", "ELBOW"])
    again = Taxonomy.from_dict(taxonomy.to_dict())
    assert again.names == ("OTHER", "WRIST", "ELBOW")
    assert again.assessed == ("WRIST", "ELBOW")
    assert again == taxonomy


def test_coded_concept_round_trip() -> None:
    code = _code()
    assert CodedConcept.from_dict(code.to_dict()) == code


def _mura_dict() -> dict[str, Any]:
    return copy.deepcopy(MURA_TAXONOMY.to_dict())


@pytest.mark.parametrize("data", [None, [], {"classes": "x"}, {"class": []}])
def test_from_dict_rejects_a_non_taxonomy(data: Any) -> None:
    with pytest.raises(ValueError, match="'classes' list"):
        Taxonomy.from_dict(data)


def test_from_dict_duplicate_names_are_named() -> None:
    data = _mura_dict()
    data["classes"][1]["name"] = "ELBOW"
    with pytest.raises(ValueError, match=r"unique.*\['ELBOW'\]"):
        Taxonomy.from_dict(data)


def test_from_dict_without_assessed_class() -> None:
    data = _mura_dict()
    for item in data["classes"]:
        item["assessed"] = False
    with pytest.raises(ValueError, match="at least one class must be assessed"):
        Taxonomy.from_dict(data)


@pytest.mark.parametrize("name", ["wrist", "1WRIST", "", "WR-IST", "W" * 33, " WRIST",
                                  "WRIST\n"])
def test_from_dict_bad_name_names_the_entry(name: str) -> None:
    data = _mura_dict()
    data["classes"][2]["name"] = name
    with pytest.raises(ValueError, match=r"taxonomy\.classes\[2\]: name must be"):
        Taxonomy.from_dict(data)


@pytest.mark.parametrize(
    ("code", "match"),
    [
        ({"value": "", "scheme": "SCT", "meaning": "Hand"}, "code.value"),
        ({"value": "85562004", "scheme": " ", "meaning": "Hand"}, "code.scheme"),
        ({"value": "85562004", "scheme": "SCT", "meaning": "x" * 65}, "code.meaning"),
        ({"value": 85562004, "scheme": "SCT", "meaning": "Hand"}, "code.value"),
        ({"value": "85562004", "scheme": "SCT"}, "exactly value, scheme and meaning"),
        ({"value": "1", "scheme": "SCT", "meaning": "Hand", "x": 1},
         "exactly value, scheme and meaning"),
        ("85562004", "exactly value, scheme and meaning"),
    ],
)
def test_from_dict_bad_code_names_the_entry_and_field(code: Any, match: str) -> None:
    data = _mura_dict()
    data["classes"][3]["code"] = code
    with pytest.raises(ValueError, match=r"taxonomy\.classes\[3\]: ") as info:
        Taxonomy.from_dict(data)
    assert match in str(info.value)


@pytest.mark.parametrize("item", [{"name": "HAND", "assessed": True},
                                  {"name": "HAND", "code": {}, "assessed": True, "x": 0},
                                  "HAND"])
def test_from_dict_entry_keys(item: Any) -> None:
    data = _mura_dict()
    data["classes"][4] = item
    with pytest.raises(ValueError, match=r"taxonomy\.classes\[4\] must have exactly"):
        Taxonomy.from_dict(data)


@pytest.mark.parametrize("assessed", [1, "true", None])
def test_from_dict_assessed_must_be_bool(assessed: Any) -> None:
    data = _mura_dict()
    data["classes"][5]["assessed"] = assessed
    with pytest.raises(ValueError, match=r"taxonomy\.classes\[5\]: assessed of class SHOULDER"):
        Taxonomy.from_dict(data)


# --- constructors ----------------------------------------------------------------------------


def test_name_of_32_characters_is_accepted() -> None:
    assert BodyPartClass("A" + "_9" * 15 + "Z", _code(), True).name.startswith("A_9")


def test_class_code_must_be_a_coded_concept() -> None:
    with pytest.raises(ValueError, match="code of class WRIST"):
        BodyPartClass("WRIST", _code().to_dict(), True)  # type: ignore[arg-type]


def test_taxonomy_needs_two_classes() -> None:
    with pytest.raises(ValueError, match="at least 2 classes, got 1"):
        Taxonomy((BodyPartClass("WRIST", _code(), True),))


def test_taxonomy_classes_must_be_body_part_classes() -> None:
    with pytest.raises(ValueError, match="BodyPartClass"):
        Taxonomy((BodyPartClass("WRIST", _code(), True), "OTHER"))  # type: ignore[arg-type]


def test_taxonomy_duplicate_names_listed_sorted() -> None:
    wrist = BodyPartClass("WRIST", _code(), True)
    hand = BodyPartClass("HAND", _code(), True)
    with pytest.raises(ValueError, match=r"repeated: \['HAND', 'WRIST'\]"):
        Taxonomy((wrist, hand, wrist, hand))


def test_taxonomy_without_assessed_class() -> None:
    with pytest.raises(ValueError, match="at least one class must be assessed"):
        Taxonomy((BodyPartClass("A", _code(), False), BodyPartClass("B", _code(), False)))


# --- from_names ------------------------------------------------------------------------------


def test_from_names_follows_the_given_order() -> None:
    taxonomy = Taxonomy.from_names(["WRIST", "OTHER", "ELBOW"])
    assert taxonomy.names == ("WRIST", "OTHER", "ELBOW")
    assert taxonomy.index("ELBOW") == 2
    assert taxonomy.assessed == ("WRIST", "ELBOW")
    assert all(taxonomy.get(n) == MURA_TAXONOMY.get(n) for n in taxonomy.names)


def test_from_names_uses_the_given_base() -> None:
    base = _small()
    taxonomy = Taxonomy.from_names(["OTHER", "WRIST"], base=base)
    assert taxonomy.names == ("OTHER", "WRIST")
    assert taxonomy.get("OTHER").code.meaning == "Entire body"  # from base, not MURA
    with pytest.raises(ValueError, match="unknown class 'HAND'"):
        Taxonomy.from_names(["HAND", "WRIST"], base=base)


def test_from_names_validates_the_result() -> None:
    with pytest.raises(ValueError, match="unknown class 'KNEE'"):
        Taxonomy.from_names(["WRIST", "KNEE"])
    with pytest.raises(ValueError, match="unique"):
        Taxonomy.from_names(["WRIST", "WRIST"])
    with pytest.raises(ValueError, match="at least 2"):
        Taxonomy.from_names(["WRIST"])
