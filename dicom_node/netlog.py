"""pynetdicom's reports of a peer's faults as one-line warnings, without tracebacks.

A peer that resets its TCP connection, sends a UID longer than 64 characters or bytes that do
not decode makes pynetdicom log an ERROR line ("Connection closed before the entire PDU was
received", "Unable to decode the received PDU data") followed by the exception with its
traceback. That is the peer's fault, handled by pynetdicom (it aborts or closes the
association), not ours: a traceback in our log only hides real faults. This filter turns each
such pair into one WARNING naming the exception, e.g.::

    peer fault: Connection closed before the entire PDU was received:
    ConnectionResetError: [Errno 104] Connection reset by peer

Only the loggers of pynetdicom's transport and decoding modules are filtered; an exception in
one of our event handlers (logged by ``pynetdicom.events`` and ``pynetdicom.association``) keeps
its traceback.
"""

from __future__ import annotations

import logging
import threading

#: pynetdicom modules whose exceptions come from what a peer sent or did.
PEER_LOGGERS = ("pynetdicom.dul", "pynetdicom.utils", "pynetdicom.transport", "pynetdicom.dimse")

_VALIDATORS = "pynetdicom.utils"

#: ERROR lines pynetdicom always follows with the exception (or its text) on the same thread.
_LEADS = frozenset(
    {
        "Connection closed before the entire PDU was received",
        "Unable to decode the received PDU data",
        "Received an invalid DIMSE message",
        "Exception in DUL.run(), aborting association",
        "Association request failed: unable to connect to remote",
    }
)


class PeerFaultFilter(logging.Filter):
    """Merge pynetdicom's lead line and exception into one warning without a traceback."""

    def __init__(self) -> None:
        super().__init__("pynetdicom")
        self._pending = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.name == _VALIDATORS and record.levelno >= logging.ERROR:
            # pynetdicom.utils logs a bad value, then raises it to its caller, which reports
            # it (merged below): kept as one DEBUG line, not said twice.
            _demote(record, message, logging.DEBUG)
            return True
        lead: str | None = getattr(self._pending, "lead", None)
        if record.exc_info is None and message in _LEADS:
            self._pending.lead = message  # said together with what follows on this thread
            return False
        self._pending.lead = None
        if record.exc_info is not None and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            detail = str(exc).splitlines()[0] if str(exc) else ""
            message = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        elif lead is None:
            return True
        _demote(record, "peer fault: " + (f"{lead}: {message}" if lead else message))
        return True


def _demote(record: logging.LogRecord, message: str, level: int = logging.WARNING) -> None:
    """Make ``record`` one line at ``level``: ``message``, no traceback."""
    if record.exc_info is not None and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        if not message.startswith("peer fault"):
            message = f"{type(exc).__name__}: {message}"
    record.msg = message.replace("\n", " ")
    record.args = None
    record.levelno, record.levelname = level, logging.getLevelName(level)
    record.exc_info = record.exc_text = record.stack_info = None


_FILTER = PeerFaultFilter()


def quiet_peer_faults() -> None:
    """Install the filter on pynetdicom's peer-facing loggers (idempotent, thread-safe)."""
    for name in PEER_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
