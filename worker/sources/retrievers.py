"""Retrieving one study from a source: WADO-RS, C-GET or C-MOVE.

Every retrieved instance goes through :func:`worker.admission.admit`, the step C-STORE and
STOW-RS use, recorded under the source's name as its calling AE title and with the source on
its study (:class:`worker.admission.Submission` ``origin``).

WADO-RS lists the study's instances with QIDO-RS first and retrieves, one at a time, the
radiographs (the SOP Classes Ossa reads) that are neither held already nor Ossa's own
objects (its SR and captures, which it stored there itself); each is asked for in the
archive's own transfer syntax, and once more in Explicit VR Little Endian when Ossa cannot
decode that one. A transfer that fails part-way leaves what it stored: the retry skips it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from http import HTTPStatus
from typing import BinaryIO, Protocol, cast

from dicom_io.retrieve import c_get_study, c_move_study
from dicom_io.send import SendOutcome, SendResult
from dicom_io.stow import StowRsPeer
from dicom_io.transfer_syntax import TRANSFER_SYNTAXES
from dicom_io.wado import (
    ANY_TRANSFER_SYNTAX,
    EXPLICIT_LITTLE,
    FoundInstance,
    find_instances,
    retrieve_instance,
)
from worker.admission import (
    Decision,
    StoreOutcome,
    StoreStatus,
    Submission,
    admit,
    read_part10,
)
from worker.config import DicomwebSource, DimseSource, Source
from worker.delivery import dimse_peer, stow_rs_peer
from worker.handlers import handle_store
from worker.intake import RADIOGRAPH_SOP_CLASSES, Intake

logger = logging.getLogger(__name__)

#: The metrics' protocol label of instances retrieved with WADO-RS.
WADO_PROTOCOL = "wadors"
#: WADO-RS answers that concern one instance only (gone since it was listed, or not to be had
#: in any transfer syntax asked for): it is counted refused, the study's other instances go on.
_INSTANCE_GONE = frozenset({HTTPStatus.NOT_FOUND, HTTPStatus.NOT_ACCEPTABLE, HTTPStatus.GONE})


@dataclass(frozen=True)
class Retrieved:
    """What one attempt at retrieving a study did.

    Parameters
    ----------
    result : SendResult
        The transfer's outcome: ``SUCCESS`` when every instance to retrieve was stored (or
        refused by admission for itself: undecodable, not a radiograph), else the failure
        that stopped it (``UNREACHABLE``/``ABORTED`` are retried, ``REFUSED`` needs an
        operator).
    expected : int or None
        How many instances the source lists in the study (None when unknown).
    stored : int
        Instances newly stored by this attempt.
    held : int
        Instances skipped or acknowledged because Ossa already held them.
    refused : int
        Instances admission refused (each logged with its SOP Instance UID and reason).
    """

    result: SendResult
    expected: int | None = None
    stored: int = 0
    held: int = 0
    refused: int = 0

    @property
    def summary(self) -> str:
        """The counts in words."""
        return f"{self.stored} stored, {self.held} already held, {self.refused} refused"


class Retriever(Protocol):
    """A source: its name and a way to retrieve one study from it."""

    @property
    def name(self) -> str:
        """The source's name in the configuration."""
        ...

    def retrieve(self, study_uid: str, stop: threading.Event) -> Retrieved:
        """Retrieve the study's instances into the intake; never raises for a network
        problem. Stops between instances once ``stop`` is set."""
        ...


class _Tally:
    """Counts admission decisions, and keeps the first that asks for a retry."""

    def __init__(self) -> None:
        self.stored = self.held = self.refused = 0
        self.transient: Decision | None = None

    def add(self, decision: Decision) -> None:
        if decision.outcome is StoreOutcome.STORED:
            self.stored += 1
        elif decision.ok:
            self.held += 1
        elif decision.status is StoreStatus.OUT_OF_RESOURCES:  # disk or store: try again
            self.transient = self.transient or decision
        else:
            self.refused += 1


@dataclass(frozen=True)
class DicomwebRetriever:
    """A ``type = "dicomweb"`` source: QIDO-RS, then WADO-RS instance by instance.

    Parameters
    ----------
    source : DicomwebSource
        The ``[[sources]]`` entry.
    intake : Intake
        Admits the instances (its spool's ``tmp`` holds the parts while they arrive).
    max_inflated_bytes : int
        ``listener.max_inflated_mb``, for admission.
    max_instance_bytes : int
        Largest WADO-RS answer (one instance) accepted (``[http] max_upload_mb``).
    """

    source: DicomwebSource
    intake: Intake
    max_inflated_bytes: int
    max_instance_bytes: int

    @property
    def name(self) -> str:
        """The source's name."""
        return self.source.name

    @property
    def peer(self) -> StowRsPeer:
        """The archive's URL, authentication and TLS settings."""
        return stow_rs_peer(self.source)

    def retrieve(self, study_uid: str, stop: threading.Event) -> Retrieved:
        """Retrieve the study's radiographs that Ossa does not hold yet."""
        peer = self.peer
        listed, instances = find_instances(peer, study_uid)
        if not listed.ok:
            return Retrieved(listed)
        store = self.intake.store
        held = store.held_sop_uids(self.name, study_uid)
        todo = []
        skipped = 0
        for instance in instances:
            if instance.sop_class_uid and instance.sop_class_uid not in RADIOGRAPH_SOP_CLASSES:
                continue  # an SR, a CT...: not read
            if instance.sop_uid in held or store.is_own_object(instance.sop_uid,
                                                               instance.series_uid):
                skipped += 1
                continue
            todo.append(instance)
        tally = _Tally()
        tally.held = skipped
        for instance in todo:
            if stop.is_set():
                return self._done(SendResult(SendOutcome.ABORTED, None, "stopped"),
                                  len(instances), tally)
            failure = self._one(peer, instance, tally)
            if failure is not None:
                return self._done(failure, len(instances), tally)
        if tally.transient is not None:
            return self._done(SendResult(SendOutcome.ABORTED, int(tally.transient.status),
                                         f"not stored here: {tally.transient.comment}"),
                              len(instances), tally)
        return self._done(SendResult(SendOutcome.SUCCESS, None,
                                     f"{peer.target}: {len(todo)} of {len(instances)}"
                                     " instance(s) retrieved"), len(instances), tally)

    @staticmethod
    def _done(result: SendResult, expected: int, tally: _Tally) -> Retrieved:
        return Retrieved(result, expected, tally.stored, tally.held, tally.refused)

    def _one(self, peer: StowRsPeer, instance: FoundInstance, tally: _Tally,
             ) -> SendResult | None:
        """Retrieve and admit one instance; the failure that should stop the study, if any."""
        for syntax in (ANY_TRANSFER_SYNTAX, EXPLICIT_LITTLE):
            result, parts = retrieve_instance(
                peer, instance, tmp_dir=str(self.intake.spool.tmp),
                max_bytes=self.max_instance_bytes, transfer_syntax=syntax,
            )
            if not result.ok:
                if result.http_status == HTTPStatus.NOT_ACCEPTABLE and syntax != EXPLICIT_LITTLE:
                    continue  # the archive cannot send it as it holds it: ask in Explicit VR
                if result.http_status in _INSTANCE_GONE:
                    # deleted or unreadable since the study was listed: that instance only
                    logger.warning("SOP Instance %s of study %s not retrieved from %s: %s",
                                   instance.sop_uid, instance.study_uid, self.name,
                                   result.detail)
                    tally.refused += 1
                    return None
                return result
            decisions = []
            try:
                for part in parts:
                    decisions.append(self._admit(part.content, instance))
            finally:
                for part in parts:
                    part.content.close()
            unsupported = [d for d in decisions
                           if d.status is StoreStatus.TRANSFER_SYNTAX_NOT_SUPPORTED]
            if unsupported and syntax == ANY_TRANSFER_SYNTAX:
                logger.info("SOP Instance %s: asking %s again in Explicit VR Little Endian",
                            instance.sop_uid, self.name)
                continue
            for decision in decisions:
                tally.add(decision)
            return None
        return None

    def _admit(self, content: object, instance: FoundInstance) -> Decision:
        """Admit one retrieved part as C-STORE admits an instance."""
        source = cast(BinaryIO, content)
        source.seek(0)
        try:
            meta = read_part10(source)
        except ValueError as exc:
            logger.warning("WADO-RS of SOP Instance %s from %s: %s", instance.sop_uid,
                           self.name, exc)
            return Decision(StoreStatus.CANNOT_UNDERSTAND, str(exc), StoreOutcome.REFUSED,
                            sop_uid=instance.sop_uid, study_uid=instance.study_uid)
        submission = Submission(
            protocol=WADO_PROTOCOL,
            calling_aet=self.name,
            file_meta=meta,
            source=source,
            offset=source.tell(),
            sop_class_uid=str(meta.get("MediaStorageSOPClassUID", "") or "")
            or instance.sop_class_uid,
            sop_uid=instance.sop_uid,
            origin=self.name,
        )
        return admit(self.intake, submission, max_inflated_bytes=self.max_inflated_bytes)


@dataclass(frozen=True)
class DimseRetriever:
    """A ``type = "dimse"`` source: C-GET, or C-MOVE to Ossa's own listener.

    Parameters
    ----------
    source : DimseSource
        The ``[[sources]]`` entry.
    intake : Intake
        Admits what a C-GET brings.
    calling_ae_title : str
        Ossa's AE title (``[listener] ae_title``): the caller, and a C-MOVE's destination.
    max_inflated_bytes : int
        ``listener.max_inflated_mb``, for admission.
    """

    source: DimseSource
    intake: Intake
    calling_ae_title: str
    max_inflated_bytes: int

    @property
    def name(self) -> str:
        """The source's name."""
        return self.source.name

    def retrieve(self, study_uid: str, stop: threading.Event) -> Retrieved:
        """C-GET (instances admitted as they come) or C-MOVE (they arrive on the listener;
        the study received meanwhile is then named this source's, whatever the outcome: a
        retry goes on with it)."""
        peer = dimse_peer(self.source)
        if self.source.retrieve == "c-move":
            result = c_move_study(peer, study_uid, calling_ae_title=self.calling_ae_title,
                                  move_destination=self.calling_ae_title)
            self.intake.store.mark_source(study_uid, self.name)
            return Retrieved(result)
        tally = _Tally()
        outcomes: list[StoreOutcome] = []
        storage = [(c, list(TRANSFER_SYNTAXES)) for c in RADIOGRAPH_SOP_CLASSES]
        result = c_get_study(
            peer, study_uid, calling_ae_title=self.calling_ae_title, storage=storage,
            store_handler=lambda event: handle_store(
                event, self.intake, self.max_inflated_bytes,
                lambda _, outcome: outcomes.append(outcome), origin=self.name),
        )
        for outcome in outcomes:
            tally.stored += outcome is StoreOutcome.STORED
            tally.held += outcome in (StoreOutcome.DUPLICATE, StoreOutcome.OWN_OBJECT)
            tally.refused += outcome is StoreOutcome.REFUSED
        # A Warning (0xB000: some sub-operations failed, e.g. a dose SR for which Ossa
        # offered no context, or an instance Ossa refused, each logged) is a retrieval as
        # complete as it can be: retrying would fail the same way.
        return Retrieved(result, None, tally.stored, tally.held, tally.refused)


def make_retriever(source: Source, intake: Intake, *, calling_ae_title: str,
                   max_inflated_bytes: int, max_instance_bytes: int) -> Retriever:
    """The retriever of a ``[[sources]]`` entry, by its ``type``."""
    if isinstance(source, DicomwebSource):
        return DicomwebRetriever(source, intake, max_inflated_bytes, max_instance_bytes)
    return DimseRetriever(source, intake, calling_ae_title, max_inflated_bytes)
