"""An accepted association whose reactor wakes when there is work, not every millisecond.

pynetdicom's acceptor reactor (``Association._run_reactor``, checked against 3.0.4) sleeps
1 ms between looks at its queues: a thousand wake-ups a second per association, each taking
the interpreter lock from the threads that receive and store data. Measured on an idle node
(`time.process_time` of the node process while a peer held associations open and sent
nothing): 1.5 % of a core with none open, 6.9 % with one, 14.0 % with four. With four
associations storing at once, the node is CPU-bound (docs/PERFORMANCE.md, Ingest).

:class:`ReactiveAssociation` runs the same loop, step for step, but waits on an event that the
two queues it reads set when something is put on them (the DIMSE provider's completed
messages, the DUL's primitives for the user: release, abort), and that :meth:`kill` sets. Whatever
the loop checks without a queue (the DUL thread's end, the network idle timer, a pause
requested by ``release()`` or a ``send_*`` from another thread) is checked at least every
:data:`REACTOR_WAIT_S`.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider

LOGGER = logging.getLogger("pynetdicom.assoc")

#: The longest the reactor sleeps when no queue has woken it.
REACTOR_WAIT_S = 0.02


class _WakingQueue(queue.Queue[Any]):
    """A queue that sets ``wake`` after every put."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake.set()


class ReactiveAssociation(Association):
    """An acceptor :class:`~pynetdicom.association.Association` with an event-driven reactor.

    Call :meth:`use_dimse` after replacing ``dimse`` (and before the association starts), so
    that the new provider's queue wakes the reactor too.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wake = threading.Event()
        if not self.dul.to_user_queue.empty():
            raise RuntimeError("the DUL's queue must be replaced before it is used")
        self.dul.to_user_queue = _WakingQueue(self._wake)
        self.use_dimse(self.dimse)

    def use_dimse(self, dimse: DIMSEServiceProvider) -> None:
        """Make ``dimse`` this association's provider, its message queue waking the reactor."""
        if not dimse.msg_queue.empty():
            raise RuntimeError("the DIMSE provider's queue must be replaced before it is used")
        dimse.msg_queue = _WakingQueue(self._wake)
        self.dimse = dimse

    def kill(self) -> None:
        """Kill the association thread (pynetdicom's), waking the reactor to see it."""
        self._wake.set()
        super().kill()

    def _run_reactor(self) -> None:
        """pynetdicom 3.0.4's ``Association._run_reactor`` with the 1 ms sleep replaced.

        The reactor waits for its event instead, and does not wait at all after serving a
        message (another may be queued behind it: one event can stand for several puts).
        """
        self._is_paused = False
        served = False
        while not self._kill:
            if not served:
                self._wake.wait(REACTOR_WAIT_S)
                self._wake.clear()
            served = False

            # A pause requested by release() or a send_*() from another thread.
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))
                served = True

            # Check for release request from the peer
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            # Check for abort from either locally or the peer
            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                LOGGER.info(log_msg)
                # Ensure that EVT_ASCE_RECV fires for subscribers
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            # The DUL thread has ended
            if not self.dul.is_alive():
                self.kill()
                return

            # Check if network_timeout has expired
            if self.dul.idle_timer_expired():
                LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()

                self.kill()
                return


__all__ = ["REACTOR_WAIT_S", "ReactiveAssociation"]
