"""dicom_io.scope: Body Part Examined and Anatomic Region Sequence to "not assessed"."""

from __future__ import annotations

import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file

from dicom_io.scope import DEFAULT_ASSESSED, DEFAULT_NOT_ASSESSED, ScopeTable, normalize_term


def _with(body_part: str | None = None, region: tuple[str, str, str] | None = None) -> Dataset:
    ds = Dataset()
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if region is not None:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = region
        ds.AnatomicRegionSequence = [item]
    return ds


@pytest.mark.parametrize("value", ["CHEST", "chest", "L SPINE", "LSPINE", "KNEE", "FOOT", "HIP",
                                   "PELVIS", "SKULL", "ABDOMEN", "LEG", "ANKLE"])
def test_other_regions_are_out_of_scope_with_the_value_in_the_reason(value: str) -> None:
    decision = ScopeTable().decide(_with(value))
    assert decision.out_of_scope
    assert f"Body Part Examined {value} is outside the assessed scope" in decision.reason


@pytest.mark.parametrize("value", ["WRIST", "HAND", "FINGER", "ELBOW", "FOREARM", "HUMERUS",
                                   "SHOULDER", "EXTREMITY", "UPPER EXTREMITY", "", "WHATEVER"])
def test_upper_limb_generic_empty_and_unknown_values_are_left_to_the_model(value: str) -> None:
    assert not ScopeTable().decide(_with(value)).out_of_scope


def test_missing_attributes_are_left_to_the_model() -> None:
    assert not ScopeTable().decide(Dataset()).out_of_scope


def test_anatomic_region_code_alone_is_enough() -> None:
    decision = ScopeTable().decide(_with(region=("51185008", "SCT", "Chest")))
    assert decision.out_of_scope and "Anatomic Region Chest" in decision.reason
    assert not ScopeTable().decide(_with(region=("74670003", "SCT", "Wrist joint"))).out_of_scope
    assert not ScopeTable().decide(_with(region=("51185008", "99LOCAL", "x"))).out_of_scope


def test_either_attribute_out_of_scope_decides() -> None:
    ds = _with("EXTREMITY", region=("72696002", "SCT", "Knee"))
    assert ScopeTable().decide(ds).out_of_scope


def test_table_is_configurable() -> None:
    table = ScopeTable(not_assessed=["HAND"], assessed=["CHEST"])
    assert table.decide(_with("hand")).out_of_scope
    assert not table.decide(_with("CHEST")).out_of_scope
    with pytest.raises(ValueError, match=r"both assessed and not assessed.*KNEE"):
        ScopeTable(not_assessed=["KNEE"], assessed=["knee"])


def test_default_lists_are_disjoint_and_normalized() -> None:
    out = {normalize_term(v) for v in DEFAULT_NOT_ASSESSED}
    inside = {normalize_term(v) for v in DEFAULT_ASSESSED}
    assert not out & inside
    assert normalize_term(" sct: 51185008 ") == "SCT:51185008"
    assert normalize_term("Upper_Extremity") == "UPPEREXTREMITY"


def test_real_nema_files() -> None:
    chest = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"), stop_before_pixels=True)
    tibia = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"), stop_before_pixels=True)
    assert ScopeTable().decide(chest).out_of_scope  # Body Part Examined CHEST
    assert not ScopeTable().decide(tibia).out_of_scope  # EXTREMITY: the model decides
