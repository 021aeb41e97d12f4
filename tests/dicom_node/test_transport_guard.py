"""dicom_node.transport overrides pynetdicom internals: fail as soon as they change underneath.

If a test here fails after a pynetdicom upgrade, read the changed function against
``dicom_node/transport.py`` or ``dicom_node/dimse_stream.py`` (their docstrings say what they
rely on), adapt the module, run ``tests/dicom_node/test_hostile_network.py`` and
``tests/dicom_node/test_streaming.py``, then update the digest.
"""

from __future__ import annotations

import hashlib
import inspect
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pynetdicom
import pytest
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dul import DULServiceProvider
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.transport import (
    AssociationServer,
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

from dicom_node.scp import StoreContext, build_ae, handle_store
from dicom_node.transport import (
    BoundedAssociationSocket,
    GuardedAssociationServer,
    GuardedRequestHandler,
)
from tests.helpers.node import make_settings

#: The pynetdicom functions the module copies, wraps or relies on, with the digest of their
#: source as checked (pynetdicom 3.0.4).
CHECKED: dict[str, tuple[Callable[..., Any], str]] = {
    "RequestHandler.handle": (RequestHandler.handle, "034823fb4df3a874"),
    "RequestHandler._create_association": (
        RequestHandler._create_association,
        "05c8d12b79863cdb",
    ),
    "AssociationSocket.__init__": (AssociationSocket.__init__, "1f0325fdef2cc353"),
    "AssociationSocket.recv": (AssociationSocket.recv, "6bc20a33b1b7cfe7"),
    "AssociationSocket.ready": (AssociationSocket.ready.fget, "3eb58e3d39dc076d"),  # type: ignore[attr-defined]
    "AssociationServer.get_request": (AssociationServer.get_request, "925a4f3a3042f6e4"),
    "ThreadedAssociationServer.process_request_thread": (
        ThreadedAssociationServer.process_request_thread,
        "9e76e9b9c8a3d8b1",
    ),
    "DULServiceProvider._read_pdu_data": (DULServiceProvider._read_pdu_data, "19f2d4e38c13c835"),
    "Association.run_reactor": (Association.run_reactor, "ed8bbbe3b3d6ddae"),
    # dicom_node/reactor.py: the loop it copies, the kill it extends, the queues it replaces.
    "Association._run_reactor": (Association._run_reactor, "f28838c5559e462a"),
    "Association.kill": (Association.kill, "8f9713666a7f4cff"),
    "Association.__init__": (Association.__init__, "eb07516b8009ad8f"),
    # dicom_node/dimse_stream.py: how a C-STORE data set is assembled and handed over.
    "DIMSEServiceProvider.receive_primitive": (
        DIMSEServiceProvider.receive_primitive,
        "5f99c86b14a15cef",
    ),
    "DIMSEMessage.decode_msg": (DIMSEMessage.decode_msg, "f51c777e841a76be"),
    "DIMSEMessage.message_to_primitive": (
        DIMSEMessage.message_to_primitive,
        "f8f43d34e43450ef",
    ),
    "StorageServiceClass.SCP": (StorageServiceClass.SCP, "63afca7fc6c6e7ee"),
    # BoundedAssociationSocket.ready stands in for the poll sleep of this loop.
    "DULServiceProvider.run_reactor": (DULServiceProvider.run_reactor, "e3a10eb3a0931e48"),
}


def test_checked_against_pynetdicom_3_0_4() -> None:
    assert pynetdicom.__version__ == "3.0.4", "re-check dicom_node/transport.py for this version"


@pytest.mark.parametrize("name", sorted(CHECKED))
def test_relied_on_pynetdicom_function_is_unchanged(name: str) -> None:
    function, digest = CHECKED[name]
    source = inspect.getsource(function)
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == digest, (
        f"pynetdicom's {name} changed: re-check dicom_node/transport.py against it"
    )


@pytest.fixture
def server(tmp_path: Any) -> Iterator[GuardedAssociationServer]:
    settings = make_settings(tmp_path)
    ae = build_ae(settings)
    ctx = StoreContext(settings, store=None, sessions=None)  # type: ignore[arg-type]
    made = ae.make_server(
        ("127.0.0.1", 0),
        evt_handlers=[(evt.EVT_C_STORE, handle_store, [ctx])],
        server_class=GuardedAssociationServer,
        settings=settings,
    )
    assert isinstance(made, GuardedAssociationServer)
    yield made
    made.server_close()


def _handler(cls: type[RequestHandler], server: AssociationServer, sock: socket.socket) -> Any:
    """A request handler bound to ``sock`` without running it (its constructor would)."""
    handler = cls.__new__(cls)
    handler.request = sock
    handler.client_address = ("127.0.0.1", 40000)
    handler.server = server
    return handler


def _plain(value: Any) -> Any:
    """A comparable picture of a configuration value (addresses, notification items, lists)."""
    if hasattr(value, "as_tuple"):
        return value.as_tuple
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if type(value).__module__.startswith("pynetdicom.pdu_primitives"):
        return (type(value).__name__, {k: _plain(v) for k, v in vars(value).items()})
    return str(value)


def _described(service_user: Any) -> dict[str, Any]:
    """A ServiceUser's attributes (its own association, which differs, left out)."""
    return {name: _plain(value) for name, value in vars(service_user).items() if name != "assoc"}


def test_bounded_association_is_set_up_as_the_library_sets_up_its_own(
    server: GuardedAssociationServer,
) -> None:
    """Our copy of ``_create_association`` configures the same acceptor, handlers and name."""
    ours_sock, theirs_sock = socket.socketpair()  # two sockets to wrap; nothing is sent
    try:
        theirs = _handler(RequestHandler, server, theirs_sock)._create_association()
        ours = _handler(GuardedRequestHandler, server, ours_sock)._create_bounded_association(
            ours_sock, bytearray()
        )
        assert isinstance(ours.dul.socket, BoundedAssociationSocket)
        assert type(theirs.dul.socket) is AssociationSocket
        assert ours.mode == theirs.mode
        assert ours._server is theirs._server is server
        assert ours.name.split("@")[0] == theirs.name.split("@")[0]
        for side in ("acceptor", "requestor"):
            assert _described(getattr(ours, side)) == _described(getattr(theirs, side)), side
        assert {e.name: h for e, h in ours._handlers.items()} == {
            e.name: h for e, h in theirs._handlers.items()
        }
        assert list(ours.dul.event_queue.queue) == list(theirs.dul.event_queue.queue) == ["Evt5"]
    finally:
        for sock in (ours_sock, theirs_sock):
            sock.close()
