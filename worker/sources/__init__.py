"""Sources: archives and PACS that Ossa finds and retrieves studies from.

A DICOMweb source (``[[sources]] type = "dicomweb"``) is polled with QIDO-RS
(:mod:`.poller`); each study it finds, and each study asked for by ``ossa analyze`` or
``POST /api/analyze``, becomes a retrieval in the state store, which a
:class:`~worker.sources.worker.RetrievalWorker` carries out (WADO-RS, or C-GET/C-MOVE for a
``type = "dimse"`` source, :mod:`.retrievers`). Retrieved instances go through the admission
C-STORE uses, recorded under the source's name as their calling AE title and with the source
on their study; the study then follows the same quiet time, classification, report and
outbox, its results going to the source's ``results_to``.
"""

from worker.sources.poller import SourcePoller
from worker.sources.retrievers import (
    DicomwebRetriever,
    DimseRetriever,
    Retrieved,
    Retriever,
    make_retriever,
)
from worker.sources.worker import RetrievalWorker

__all__ = ["DicomwebRetriever", "DimseRetriever", "RetrievalWorker", "Retrieved", "Retriever",
           "SourcePoller", "make_retriever"]
