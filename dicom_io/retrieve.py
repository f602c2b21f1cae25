"""C-GET and C-MOVE as SCU: retrieve one study from a PACS (PS3.4 C.4.2, C.4.3).

C-GET brings the study's instances back on the same association: Ossa proposes each Storage
SOP Class it reads with the SCP role (PS3.7 D.3.3.4, SCP/SCU Role Selection) and the PACS's
C-STORE sub-operations go to ``store_handler``, the same handler the listener uses. C-MOVE
asks the PACS to send the study to another AE (Ossa's own listener): the PACS must know that
AE title's host and port, and the instances arrive on the listener like any C-STORE.

Both query at the STUDY level of the Study Root information model. Like
:func:`dicom_io.send.send_c_store`, every outcome is a :class:`~dicom_io.send.SendResult`:
``SUCCESS`` when every sub-operation completed, ``WARNING`` when some failed (the PACS's
0xB000), ``REFUSED`` for a failure status, ``UNREACHABLE``/``REJECTED``/``ABORTED`` as for
C-STORE.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydicom import Dataset
from pynetdicom import build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import (
    QR_GET_SERVICE_CLASS_STATUS,
    QR_MOVE_SERVICE_CLASS_STATUS,
    code_to_category,
)

from dicom_io.send import DimsePeer, SendOutcome, SendResult, associate, status_detail

logger = logging.getLogger(__name__)

_SUB_OPERATIONS = (
    ("NumberOfCompletedSuboperations", "completed"),
    ("NumberOfFailedSuboperations", "failed"),
    ("NumberOfWarningSuboperations", "with warnings"),
)


def _identifier(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    return ds


def _final(responses: Any, target: str, what: str,
           statuses: Mapping[int, tuple[str, str]]) -> SendResult:
    """The result of a C-GET or C-MOVE from its responses (the last one is final);
    ``statuses``, the service's status table (:func:`dicom_io.send.status_detail`)."""
    last: Dataset | None = None
    for status, _ in responses:
        if status is None or "Status" not in status:
            return SendResult(SendOutcome.ABORTED, None,
                              f"{target}: {what}: no response (timeout or aborted association)")
        last = status
    if last is None:
        return SendResult(SendOutcome.ABORTED, None, f"{target}: {what}: no response")
    code = int(last.Status)
    category = code_to_category(code)
    counts = ", ".join(f"{int(last.get(k) or 0)} {label}" for k, label in _SUB_OPERATIONS
                       if k in last)
    # The status's meaning, never the peer's free-text Error Comment (dicom_io.send's notes).
    detail = (f"{target} answered {what} with {status_detail(code, statuses)}"
              + (f": {counts}" if counts else ""))
    if category == "Success":
        return SendResult(SendOutcome.SUCCESS, code, detail)
    if category == "Warning":
        return SendResult(SendOutcome.WARNING, code, detail)
    return SendResult(SendOutcome.REFUSED, code, detail)


def c_get_study(
    peer: DimsePeer,
    study_uid: str,
    *,
    calling_ae_title: str,
    storage: Sequence[tuple[str, Sequence[str]]],
    store_handler: Callable[[evt.Event], Any],
) -> SendResult:
    """Retrieve a study with C-GET (PS3.4 C.4.3); its instances go to ``store_handler``.

    Parameters
    ----------
    peer : DimsePeer
        The PACS (its Query/Retrieve SCP).
    study_uid : str
        The Study Instance UID.
    calling_ae_title : str
        Ossa's AE title (a PACS answers C-GET only to AE titles it knows).
    storage : sequence of (SOP Class UID, transfer syntaxes)
        The Storage SOP Classes to accept, each offered with the SCP role.
    store_handler : callable
        The ``EVT_C_STORE`` handler of the sub-operations (returns their status).
    """
    contexts = [(str(StudyRootQueryRetrieveInformationModelGet), _DEFAULT_SYNTAXES)]
    contexts += [(sop_class, list(syntaxes)) for sop_class, syntaxes in storage]
    target, assoc = associate(
        peer, calling_ae_title, contexts,
        ext_neg=[build_role(sop_class, scp_role=True) for sop_class, _ in storage],
        evt_handlers=[(evt.EVT_C_STORE, store_handler)],
    )
    if isinstance(assoc, SendResult):
        logger.warning("C-GET of study %s from %s: %s", study_uid, target, assoc.detail)
        return assoc
    try:
        result = _final(assoc.send_c_get(_identifier(study_uid),
                                         StudyRootQueryRetrieveInformationModelGet),
                        target, "C-GET", QR_GET_SERVICE_CLASS_STATUS)
    except (ValueError, RuntimeError) as exc:
        result = SendResult(SendOutcome.REJECTED, None, f"{target}: C-GET: {exc}")
    finally:
        if assoc.is_established:
            assoc.release()
    log = logger.info if result.ok else logger.warning
    log("C-GET of study %s from %s: %s", study_uid, target, result.detail)
    return result


def c_move_study(
    peer: DimsePeer, study_uid: str, *, calling_ae_title: str, move_destination: str
) -> SendResult:
    """Ask ``peer`` to send a study to ``move_destination`` with C-MOVE (PS3.4 C.4.2).

    The result is the PACS's final answer: its C-STORE sub-operations to the destination
    (Ossa's listener) have ended by then.
    """
    target, assoc = associate(
        peer, calling_ae_title,
        [(StudyRootQueryRetrieveInformationModelMove, _DEFAULT_SYNTAXES)],
    )
    if isinstance(assoc, SendResult):
        logger.warning("C-MOVE of study %s from %s: %s", study_uid, target, assoc.detail)
        return assoc
    try:
        result = _final(assoc.send_c_move(_identifier(study_uid), move_destination,
                                          StudyRootQueryRetrieveInformationModelMove),
                        target, f"C-MOVE to {move_destination}", QR_MOVE_SERVICE_CLASS_STATUS)
    except (ValueError, RuntimeError) as exc:
        result = SendResult(SendOutcome.REJECTED, None, f"{target}: C-MOVE: {exc}")
    finally:
        if assoc.is_established:
            assoc.release()
    log = logger.info if result.ok else logger.warning
    log("C-MOVE of study %s from %s: %s", study_uid, target, result.detail)
    return result


#: Transfer syntaxes of the Query/Retrieve contexts (the identifiers are small).
_DEFAULT_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
