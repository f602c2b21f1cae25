"""Names of the MURA-v1.1 release layout, shared by the loader and the phantom (no torch).

::

    MURA-v1.1/{train,valid}/XR_<CLASS>/patientNNNNN/studyK_{positive,negative}/imageN.png
    MURA-v1.1/{split}_image_paths.csv        one image path per line, no header
    MURA-v1.1/{split}_labeled_studies.csv    study_dir/,label (1 = abnormal), no header

CSV paths start with the dataset directory's name and are relative to its parent.
"""

from __future__ import annotations

#: Name of the dataset directory, as in the MURA-v1.1 release.
DATASET_DIRNAME = "MURA-v1.1"
#: The two MURA splits.
SPLITS: tuple[str, ...] = ("train", "valid")
#: Prefix of a class (body part) directory: ``XR_WRIST``.
CLASS_DIR_PREFIX = "XR_"


def image_paths_csv(split: str) -> str:
    """File name of a split's image list, e.g. ``train_image_paths.csv``."""
    _check_split(split)
    return f"{split}_image_paths.csv"


def labeled_studies_csv(split: str) -> str:
    """File name of a split's study labels, e.g. ``train_labeled_studies.csv``."""
    _check_split(split)
    return f"{split}_labeled_studies.csv"


def class_dirname(name: str) -> str:
    """Directory name of a class (body part): ``WRIST`` -> ``XR_WRIST``."""
    return f"{CLASS_DIR_PREFIX}{name}"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
