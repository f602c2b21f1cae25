"""models.serving.clahe gives scikit-image's CLAHE value for value (the shipped models were
trained with it), on real films and random images of many shapes and parameters."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from skimage import exposure

from dicom_io.pixels import normalize_radiograph
from models.serving.clahe import equalize_adapthist
from models.serving.enhance import clahe, resize_longest


def _skimage(image: np.ndarray, kernel: tuple[int, int], clip: float, nbins: int) -> np.ndarray:
    return np.asarray(
        exposure.equalize_adapthist(image, kernel_size=kernel, clip_limit=clip, nbins=nbins)
    )


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG3_UNCR.dcm", "RG3_UNCI.dcm"])
@pytest.mark.parametrize("size", [224, 384, 448])
def test_real_film_at_network_sizes(name: str, size: int) -> None:
    """NEMA WG04 CRs, resized as the networks see them, with the shipped bundle's settings."""
    film = resize_longest(normalize_radiograph(pydicom.dcmread(get_testdata_file(name))), size)
    kernel = (min(96, film.shape[0]), min(96, film.shape[1]))
    ours = equalize_adapthist(film, kernel, 0.01, 256)
    theirs = _skimage(film, kernel, 0.01, 256)
    assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)
    # enhance.clahe (what preprocessing calls) is the same function.
    np.testing.assert_array_equal(clahe(film, clip_limit=0.01, kernel_size=96), theirs)


def test_random_images_shapes_and_parameters() -> None:
    """Shapes that are and are not multiples of the kernel, kernels from one pixel to the whole
    image, clip limits that clip nothing or nearly everything, few and many bins, float32 and
    float64, blank halves and constant images."""
    rng = np.random.default_rng(20261207)
    for case in range(120):
        rows, columns = (int(v) for v in rng.integers(2, 160, 2))
        dtype = np.float32 if case % 2 else np.float64
        image = rng.random((rows, columns)).astype(dtype)
        if case % 3 == 0:
            image = (image**3).astype(dtype)
        if case % 5 == 0:
            image[: rows // 2] = 0
        if case % 17 == 0:
            image[:] = 0.5
        kernel = (int(rng.integers(1, rows + 1)), int(rng.integers(1, columns + 1)))
        clip = float(rng.choice([0.001, 0.01, 0.03, 0.2, 1.0]))
        nbins = int(rng.choice([2, 16, 100, 256, 1000]))
        ours = equalize_adapthist(image, kernel, clip, nbins)
        theirs = _skimage(image, kernel, clip, nbins)
        assert ours.dtype == theirs.dtype, (case, kernel, clip, nbins)
        np.testing.assert_array_equal(ours, theirs, err_msg=f"case {case}")


@pytest.mark.parametrize(
    ("shape", "kernel", "nbins", "message"),
    [
        ((4, 4, 3), (2, 2), 256, "2-D"),
        ((8, 8), (9, 2), 256, "kernel_size"),
        ((8, 8), (0, 2), 256, "kernel_size"),
        ((8, 8), (2, 2), 0, "nbins"),
    ],
)
def test_invalid_arguments_are_refused(
    shape: tuple[int, ...], kernel: tuple[int, int], nbins: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        equalize_adapthist(np.zeros(shape, dtype=np.float32), kernel, 0.01, nbins)
