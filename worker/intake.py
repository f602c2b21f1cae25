"""Receiving instances: what is accepted, written and recorded, and start-up reconciliation.

An instance is accepted when the file is durably written *and* its row committed in the
state store; only then does the C-STORE handler answer success. Objects Ossa produced
itself (its SRs and secondary captures), which a PACS rule may forward back, are recognised
and acknowledged without being stored or reported again. Ossa's secondary captures share
their SOP Class with digitised films, which Ossa reads, so the own-object check comes first
(:meth:`Intake.classify`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import BinaryIO

import pydicom
from pydicom.uid import (
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    EnhancedSRStorage,
    SecondaryCaptureImageStorage,
)

from dicom_io.derived import MANUFACTURER
from worker.spool import Spool
from worker.store import StateStore

logger = logging.getLogger(__name__)

#: Storage SOP Classes Ossa reads: CR (PS3.4 B.5), DX for presentation and for processing,
#: and single-frame Secondary Capture (digitised films; grayscale only, checked on receipt).
RADIOGRAPH_SOP_CLASSES: tuple[str, ...] = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
#: SOP Classes of the objects Ossa produces (SRs, secondary captures): an SR is accepted on
#: the listener only to recognise Ossa's own forwarded back.
OWN_OBJECT_SOP_CLASSES: tuple[str, ...] = (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    BasicTextSRStorage,
    SecondaryCaptureImageStorage,
)
#: Every Storage SOP Class the listener negotiates; others are refused at association.
STORAGE_SOP_CLASSES: tuple[str, ...] = tuple(
    dict.fromkeys(RADIOGRAPH_SOP_CLASSES + OWN_OBJECT_SOP_CLASSES)
)

#: Calling AE title recorded for a file registered at start-up without one in its meta.
UNKNOWN_AET = "UNKNOWN"


class Kind(StrEnum):
    """What a received object is to Ossa."""

    OWN_OBJECT = "own object"  # Ossa's SR or secondary capture: acknowledged, not stored
    RADIOGRAPH = "radiograph"  # an image to validate, store and report
    NOT_READ = "not read"  # an SR (or other object) Ossa did not produce: refused


class Accepted(StrEnum):
    """What became of a received object."""

    STORED = "stored"  # a new instance of its study
    DUPLICATE = "duplicate"  # SOP Instance UID already stored for the study: not new


@dataclass(frozen=True)
class Received:
    """The identifying attributes of a received object (UIDs and the sender, no PHI)."""

    calling_aet: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    manufacturer: str = ""
    source: str | None = None  # the [[sources]] entry it was retrieved from, if any


class Intake:
    """Writes received instances to the spool and records them in the state store.

    Parameters
    ----------
    spool : Spool
        Where the bytes go.
    store : StateStore
        Where the rows go.
    observer : callable, optional
        Told ``(protocol, outcome, refusal reason or "")`` of each instance that C-STORE or
        STOW-RS delivers (:func:`worker.admission.admit`); the service's metrics count them.
    """

    def __init__(
        self,
        spool: Spool,
        store: StateStore,
        *,
        observer: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.spool = spool
        self.store = store
        self.observer = observer

    def classify(self, received: Received) -> Kind:
        """What ``received`` is: Ossa's own object first (its secondary capture shares the
        SOP Class of a digitised film), then a radiograph by SOP Class, else not read.

        Raises
        ------
        StoreError
            If the state store cannot be read.
        """
        if received.sop_class_uid in OWN_OBJECT_SOP_CLASSES and self.is_own_object(received):
            return Kind.OWN_OBJECT
        if received.sop_class_uid in RADIOGRAPH_SOP_CLASSES:
            return Kind.RADIOGRAPH
        return Kind.NOT_READ

    def is_own_object(self, received: Received) -> bool:
        """Whether an SR or secondary capture is one Ossa produced (forwarded back by a
        PACS rule): its SOP Instance UID or series is in the state store, or its
        Manufacturer (0008,0070) is Ossa's."""
        return received.manufacturer == MANUFACTURER or self.store.is_own_object(
            received.sop_uid, received.series_uid
        )

    def accept(
        self, received: Received, data: bytes, data_set: BinaryIO | None = None
    ) -> Accepted:
        """Write and record one radiograph, or recognise it as a re-sent one.

        Parameters
        ----------
        received : Received
            Its UIDs and calling AE title; its SOP Class is one of
            :data:`RADIOGRAPH_SOP_CLASSES`.
        data : bytes
            The DICOM file (PS3.10) to write, or its preamble and File Meta Information
            when ``data_set`` follows.
        data_set : binary file, optional
            The data set as sent, copied from its current position to its end.

        Returns
        -------
        Accepted
            ``STORED`` for a new instance of its study, ``DUPLICATE`` for a re-sent one.

        Raises
        ------
        OSError, StoreError
            If the file or its row could not be written; the sender must then be told the
            instance was not stored, and a file written for it is removed again (unless it
            replaced the copy of an instance stored earlier, whose row is still there):
            otherwise the next start would register, and report, an instance the sender
            was told had not been stored.
        """
        path = self.spool.instance_path(received.calling_aet, received.study_uid, received.sop_uid)
        earlier_copy = self.spool.exists(path)
        size = self.spool.write(path, data, data_set)
        try:
            new = self._record(received, path, size)
        except BaseException:
            if not earlier_copy:
                self.spool.remove(path)
            raise
        return Accepted.STORED if new else Accepted.DUPLICATE

    def _record(self, received: Received, path: str, size: int) -> bool:
        """Record a written instance; whether it is new to its study."""
        return self.store.add_instance(
            calling_aet=received.calling_aet,
            study_uid=received.study_uid,
            sop_uid=received.sop_uid,
            sop_class_uid=received.sop_class_uid,
            series_uid=received.series_uid,
            path=path,
            size=size,
            source=received.source,
        )

    def reconcile(self, *, grace_s: float = 0.0) -> tuple[int, int]:
        """Make the store and the disk agree; run at start-up before the listener.

        A file without a row (a crash between the write and the commit) is registered from
        its own header, if it was last written ``grace_s`` seconds ago or earlier (on a root
        shared by several nodes, a younger one may be another node's, its row about to be
        committed); a row without its file is marked lost and logged.

        Returns
        -------
        tuple of int
            Files registered, rows marked lost.
        """
        self.spool.clear_tmp()
        known = self.store.instance_paths()
        registered = 0
        young = time.time() - grace_s
        for path in self.spool.instance_files():
            if path in known or (grace_s > 0 and self.spool.path(path).stat().st_mtime > young):
                continue
            received = _read_header(self.spool, path)
            if received is None:
                continue
            self._record(received, path, self.spool.path(path).stat().st_size)
            logger.warning(
                "Registered SOP Instance %s of study %s: its file had no row in the state store",
                received.sop_uid,
                received.study_uid,
            )
            registered += 1
        lost = 0
        for path, kind in self.store.stored_files():
            if not self.spool.exists(path):
                if kind == "instance":
                    self.store.mark_lost(path)
                logger.error("Lost %s: file %s is missing from the spool", kind, path)
                lost += 1
        return registered, lost


def _read_header(spool: Spool, path: str) -> Received | None:
    """The identifying attributes of a spool file, or None (logged) if it is unreadable."""
    try:
        ds = pydicom.dcmread(spool.path(path), stop_before_pixels=True)
        return Received(
            calling_aet=str(ds.file_meta.get("SourceApplicationEntityTitle", "") or UNKNOWN_AET),
            study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
            sop_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
        )
    except Exception as exc:  # pydicom raises many types for a damaged file
        logger.error("Cannot register spool file %s: %s", path, type(exc).__name__)
        return None
