"""pynetdicom's DIMSE provider, with each C-STORE data set written to storage as it arrives.

pynetdicom (checked against 3.0.4) gathers a C-STORE data set in a ``BytesIO`` and hands it to
the handler after the last fragment; the handler then writes and fsyncs all of it while the
sender waits. Its own chunked mode (``_config.STORE_RECV_CHUNKED_DATASET``) is global, writes
to the system's temporary folder (another file system than the storage, maybe) with its own
file meta, and flushes every fragment. :class:`StreamingDIMSE` instead gives the fragments of
each C-STORE-RQ data set to an :class:`~dicom_node.receiving.IncomingDataSet` in the storage
folder, which writes and pushes them to the disk while the rest arrives.

What it relies on, in ``DIMSEServiceProvider.receive_primitive`` and
``DIMSEMessage.decode_msg``: the message being assembled is ``self.message``; once its
command set is complete its class is the message type (``C_STORE_RQ``) and ``context_id`` is
set; data fragments before that go to ``message.data_set``; a final data fragment completes the
message, whose ``_data_set_path`` becomes the request primitive's ``_dataset_path`` (read by
``Event.dataset_path``); ``StorageServiceClass.SCP`` deletes nothing when ``_dataset_file`` is
None. ``tests/dicom_node/test_transport_guard.py`` pins these functions' sources.

The handler takes the received data set with :func:`take_received`; whatever is not taken (an
abort mid-transfer, a message never served) is removed by :meth:`StreamingDIMSE.discard_all`
when the association ends.
"""

from __future__ import annotations

import logging
import threading
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, cast

from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.pdu_primitives import P_DATA

from dicom_node.activity import IngestActivity
from dicom_node.ingest import file_meta_for
from dicom_node.receiving import IncomingDataSet, ReceivedDataSet
from dicom_node.storage import InstanceStore, StorageError

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event

log = logging.getLogger(__name__)

#: The message control header's bits (PS3.8 E.2): command (else data set), last fragment.
_COMMAND = 0x01
_LAST = 0x02
#: A PDV item's item length (4 bytes), presentation context ID and message control header.
_PDV_HEADER = 6
#: A P-DATA value that ends a data set without adding to it.
_END_OF_DATA_SET = bytes([_LAST])


class StreamingDIMSE(DIMSEServiceProvider):
    """The DIMSE provider of an association we accepted, streaming C-STORE data sets to disk."""

    def __init__(
        self, assoc: Association, store: InstanceStore, activity: IngestActivity | None = None
    ) -> None:
        super().__init__(assoc)
        self._store = store
        #: Told of every P-DATA received, so that background work yields to ingest.
        self._activity = activity
        self._incoming: IncomingDataSet | None = None
        self._declined: object = None  # the message whose data set stays in memory
        self._received: dict[Path, ReceivedDataSet] = {}
        self._lock = threading.Lock()

    def receive_primitive(self, primitive: P_DATA) -> None:
        """Route data-set fragments of a C-STORE-RQ to its file; everything else to pynetdicom."""
        if self._activity is not None:
            self._activity.touch()
        incoming = self._incoming
        if incoming is None:
            super().receive_primitive(primitive)
            self._start_streaming()
            return
        values = primitive.presentation_data_value_list
        for index, (context_id, value) in enumerate(values):
            control = value[0]
            if control & _COMMAND:
                # A command in the middle of a data set: not ours to make sense of.
                self._incoming = None
                incoming.discard()
                super().receive_primitive(_p_data(values[index:]))
                return
            incoming.write(memoryview(value)[1:])
            if control & _LAST:
                self._complete(incoming, context_id)
                if index + 1 < len(values):
                    self.receive_primitive(_p_data(values[index + 1 :]))
                return

    def _start_streaming(self) -> None:
        """After a C-STORE-RQ's command set: open its file, with what already came of its data."""
        message = self.message
        if not isinstance(message, C_STORE_RQ) or message.context_id is None:
            return
        if message is self._declined:
            return
        self._declined = message  # one attempt per message
        context = self.assoc._accepted_cx.get(message.context_id)
        command = message.command_set
        if context is None or context.transfer_syntax is None:
            return  # pynetdicom refuses it as it always does
        meta = file_meta_for(
            str(command.AffectedSOPClassUID),
            str(command.AffectedSOPInstanceUID),
            str(context.transfer_syntax[0]),
        )
        try:
            incoming = IncomingDataSet(self._store, meta)
        except (StorageError, ValueError, TypeError) as exc:
            # No file (disk full, or identifiers our file meta cannot hold): pynetdicom keeps
            # the data set in memory and the handler answers from that.
            log.warning("C-STORE data set kept in memory: %s", type(exc).__name__)
            return
        data_set = cast(BytesIO, message.data_set)
        incoming.write(data_set.getvalue())
        message.data_set = BytesIO()
        self._incoming = incoming

    def _complete(self, incoming: IncomingDataSet, context_id: int) -> None:
        """The last fragment arrived: finish the file, then let pynetdicom complete the message."""
        self._incoming = None
        received = incoming.finish()
        with self._lock:
            self._received[received.path] = received
        message = self.message
        assert message is not None
        message._data_set_path = received.path
        super().receive_primitive(_p_data([(context_id, _END_OF_DATA_SET)]))

    def receive_fragments(self, body: bytearray) -> bool:
        """Write a P-DATA-TF body's PDVs if all are non-final fragments of the data set.

        ``body`` is a PDU's PDV items (PS3.8 9.3.5.1: item length, context ID, message control
        header, fragment) and must not change afterwards. Nothing is written unless every item
        qualifies; then the caller leaves the PDU to pynetdicom (False).
        """
        if self._activity is not None:
            self._activity.touch()
        incoming, message = self._incoming, self.message
        if incoming is None or message is None:
            return False
        view = memoryview(body)
        fragments = []
        offset = 0
        while offset < len(view):
            if offset + _PDV_HEADER > len(view):
                return False
            length = int.from_bytes(view[offset : offset + 4], "big")
            end = offset + 4 + length
            if length < 2 or end > len(view):
                return False
            if view[offset + 4] != message.context_id or view[offset + 5] & (_COMMAND | _LAST):
                return False
            fragments.append(view[offset + _PDV_HEADER : end])
            offset = end
        if not fragments:
            return False
        for fragment in fragments:
            incoming.write(fragment)
        return True

    @property
    def receiving(self) -> bool:
        """Whether a data set is being received (the peer owes us its next fragment)."""
        return self._incoming is not None

    def take(self, path: Path | None) -> ReceivedDataSet | None:
        """The received data set a C-STORE request names, now owned by the caller."""
        if path is None:
            return None
        with self._lock:
            return self._received.pop(path, None)

    def discard_all(self) -> None:
        """Remove every data set not taken by a handler and the one being received, if any."""
        incoming, self._incoming = self._incoming, None
        if incoming is not None:
            incoming.discard()
        with self._lock:
            left, self._received = list(self._received.values()), {}
        for received in left:
            received.discard()


def _p_data(values: list[tuple[int, bytes]]) -> P_DATA:
    """A P-DATA primitive of ``values`` (as lists: pynetdicom's setter checks for ``[ID, PDV]``)."""
    primitive = P_DATA()
    primitive.presentation_data_value_list = [
        cast(tuple[int, bytes], [context_id, value]) for context_id, value in values
    ]
    return primitive


def take_received(event: Event) -> ReceivedDataSet | None:
    """The data set of a C-STORE event when it was streamed to a file, else None."""
    dimse = event.assoc.dimse
    if not isinstance(dimse, StreamingDIMSE):
        return None
    path = getattr(event.request, "_dataset_path", None)
    return dimse.take(path if isinstance(path, Path) else None)


__all__ = ["StreamingDIMSE", "take_received"]
