"""The accepted association's reactor: woken by its queues, not by a 1 ms poll."""

from __future__ import annotations

import threading
import time

import pytest
from pynetdicom import AE

from dicom_node.conformance import VERIFICATION_SOP_CLASS
from dicom_node.reactor import REACTOR_WAIT_S, ReactiveAssociation
from gateway.service import Service
from tests.dicom_node.test_scp import CALLED, small_dx, store_datasets, stored_rows


def accepted(node: Service) -> ReactiveAssociation:
    assert node.scp is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [a for a in node.scp.active_associations if isinstance(a, ReactiveAssociation)]
        if found and found[0].is_established:
            return found[0]
        threading.Event().wait(0.01)
    raise AssertionError("no accepted association")


def test_an_idle_association_looks_at_its_queues_rarely(node: Service) -> None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=CALLED)
    assert assoc.is_established
    try:
        ours = accepted(node)
        looks = 0
        original = ours.dimse.get_msg

        def counting(block: bool = True) -> object:
            nonlocal looks
            looks += 1
            return original(block)

        ours.dimse.get_msg = counting  # type: ignore[method-assign]
        started = time.monotonic()
        threading.Event().wait(1.0)  # the measurement window itself, not a synchronisation
        elapsed = time.monotonic() - started
        # A 1 ms poll looks hundreds of times a second; this reactor about 1 / REACTOR_WAIT_S.
        assert looks <= elapsed / REACTOR_WAIT_S + 5
        assert looks >= 1  # and it does still look
        # The association still serves at once.
        assert int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()
    assert not assoc.is_established


def test_several_messages_in_a_row_are_all_served(node: Service) -> None:
    images = [small_dx() for _ in range(12)]
    assert store_datasets(node.dicom_port, images) == [0] * 12
    assert len(stored_rows(node)) == 12


def test_a_peer_abort_ends_the_reactor(node: Service) -> None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=CALLED)
    ours = accepted(node)
    assoc.abort()
    ours.join(10)
    assert not ours.is_alive()
    assert ours.is_aborted


def test_the_queues_must_be_fresh_when_the_provider_is_replaced(node: Service) -> None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=CALLED)
    try:
        ours = accepted(node)
        stale = type(ours.dimse)(ours, node.store)  # type: ignore[call-arg]
        stale.msg_queue.put((1, object()))
        with pytest.raises(RuntimeError, match="before it is used"):
            ours.use_dimse(stale)
    finally:
        assoc.release()
