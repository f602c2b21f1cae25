"""Carrying out retrievals: one worker per source, retried with backoff like deliveries.

A :class:`RetrievalWorker` takes its source's due retrievals from the state store one at a
time (leased to this node: in a cluster any node retrieves, never two at once), runs its
:class:`~worker.sources.retrievers.Retriever` and records the outcome. A failure is retried
with the outbox's :class:`~worker.delivery.RetryPolicy` (``[delivery]``): exponential
backoff with jitter until ``give_up_after_s``; a refusal that needs an operator (HTTP 401,
403, 404; a C-GET refused) is ``failed`` at once, shown by ``ossa status`` with its reason
until ``ossa retry --source``.
"""

from __future__ import annotations

import logging
import random
import threading

from dicom_io.send import SendOutcome, SendResult
from worker.delivery import RetryPolicy, is_permanent
from worker.sources.retrievers import Retrieved, Retriever
from worker.store import Retrieval, RetrievalState, StateStore, StoreError

logger = logging.getLogger(__name__)


class RetrievalWorker:
    """Retrieves the due studies of one source, one at a time.

    Parameters
    ----------
    retriever : Retriever
        The source.
    store : StateStore
        The retrievals.
    policy : RetryPolicy
        Backoff and give-up.
    stop : threading.Event
        Ends :meth:`run` after the study in progress (which stops between instances).
    wake : threading.Event, optional
        Set when a retrieval may be due (a poll queued some).
    poll_interval_s : float
        Longest wait between looks at the store (picks up ``ossa analyze`` from another
        process or node).
    """

    def __init__(
        self,
        retriever: Retriever,
        store: StateStore,
        policy: RetryPolicy,
        stop: threading.Event,
        *,
        wake: threading.Event | None = None,
        poll_interval_s: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self.retriever = retriever
        self.store = store
        self.policy = policy
        self.stop = stop
        self.wake = wake or threading.Event()
        self.poll_interval_s = poll_interval_s
        self._rng = rng or random.Random()

    @property
    def name(self) -> str:
        """The source's name."""
        return self.retriever.name

    def run_once(self) -> bool:
        """Attempt the oldest due retrieval; return whether there was one."""
        retrieval = self.store.due_retrieval((self.name,))
        if retrieval is None:
            return False
        logger.info("Retrieving study %s from %s (attempt %d)", retrieval.study_uid, self.name,
                    retrieval.attempts + 1)
        try:
            got = self.retriever.retrieve(retrieval.study_uid, self.stop)
        except Exception as exc:  # e.g. the spool's disk full, the store unreachable
            logger.exception("Retrieval of study %s from %s failed unexpectedly",
                             retrieval.study_uid, self.name)
            got = Retrieved(SendResult(SendOutcome.ABORTED, None,
                                       f"error in Ossa: {type(exc).__name__}"))
        if self.stop.is_set() and not got.result.ok:
            # stopped in the middle: no attempt counted, due again at the next start
            self.store.release_retrieval(retrieval.retrieval_id)
            return True
        self._record(retrieval, got)
        return True

    def _record(self, retrieval: Retrieval, got: Retrieved) -> None:
        result = got.result
        attempts = retrieval.attempts + 1
        if result.ok:
            state, why, retry_at = RetrievalState.DONE, got.summary, None
        else:
            now = self.store.now()
            retry_at = now + self.policy.delay(attempts, self._rng)
            if is_permanent(result):
                state, why = RetrievalState.FAILED, "refused by the source"
            elif retry_at - retrieval.queued_at > self.policy.give_up_after_s:
                state, why = RetrievalState.FAILED, f"gave up after {attempts} attempts"
            else:
                state, why = RetrievalState.PENDING, f"retry in {retry_at - now:.0f} s"
        recorded = self.store.record_retrieval(
            retrieval.retrieval_id, state=state, outcome=result.outcome.value,
            detail=f"{result.detail} ({got.summary})",
            retrieved=got.stored, expected=got.expected, next_attempt=retry_at,
        )
        if not recorded:
            logger.warning("Retrieval of study %s from %s: attempt not recorded, the retrieval"
                           " is no longer this node's", retrieval.study_uid, self.name)
            return
        if state is RetrievalState.DONE:
            logger.info("Retrieved study %s from %s: %s", retrieval.study_uid, self.name, why)
            return
        log = logger.error if state is RetrievalState.FAILED else logger.warning
        log("Retrieval of study %s from %s: attempt %d %s (%s; %s); %s", retrieval.study_uid,
            self.name, attempts, result.outcome.value, result.detail, got.summary, why)

    def run(self) -> None:
        """Retrieve until ``stop`` is set; waits for the next due retrieval in between."""
        while not self.stop.is_set():
            wait = self.poll_interval_s
            try:
                if self.run_once():
                    continue
                due = self.store.next_retrieval((self.name,))
                if due is not None:
                    wait = min(wait, max(0.0, due - self.store.now()))
            except StoreError as exc:
                logger.error("Source %s: state store error: %s", self.name, exc)
            except Exception:  # the worker must outlive any one retrieval
                logger.exception("Source %s: unexpected error while retrieving", self.name)
            if self.wake.wait(wait):
                self.wake.clear()
