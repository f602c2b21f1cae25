"""dicom_io.derived.source_header: a pixel-free copy of a source that shares nothing mutable
with it, whatever the SR or capture builders then do to the copy."""

from __future__ import annotations

from collections.abc import Callable

from pydicom import Dataset

from dicom_io.derived import source_header


def test_the_header_is_the_source_without_its_pixels(
    make_radiograph: Callable[..., Dataset],
) -> None:
    source = make_radiograph()
    header = source_header(source)
    assert "PixelData" not in header
    for element in source:
        if element.keyword != "PixelData":
            assert header[element.tag] == element
            assert header[element.tag] is not element


def test_changing_the_header_in_place_leaves_the_source_as_it_was(
    make_radiograph: Callable[..., Dataset],
) -> None:
    source = make_radiograph()
    source.ImageType = ["ORIGINAL", "PRIMARY"]
    item = Dataset()
    item.CodeValue = "T-15460"
    source.AnatomicRegionSequence = [item]
    source.WindowCenter = [2048, 1024]
    header = source_header(source)
    # Values that can change in place are copies: a multi-valued list, a sequence's items.
    header.ImageType.append("DERIVED")
    header.AnatomicRegionSequence[0].CodeValue = "CHANGED"
    header.WindowCenter[0] = 1
    header.PatientID = "CHANGED"
    assert list(source.ImageType) == ["ORIGINAL", "PRIMARY"]
    assert source.AnatomicRegionSequence[0].CodeValue == "T-15460"
    assert list(source.WindowCenter) == [2048, 1024]
    assert source.PatientID != "CHANGED"
