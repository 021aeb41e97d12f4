"""The outbox's state machine, status classification and administration, on a real database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select, update

from config.settings import OutboxSettings
from db.base import utcnow
from db.results import OutboxEntry, OutboxState
from dicom_node.outbox import (
    DeliveryOutcome,
    StoreResponseStatus,
    claim_due,
    classify_store_status,
    list_outbox,
    outbox_depths,
    record_outcome,
    retry_all_dead_letters,
    retry_dead_letter,
)
from tests.helpers.results_db import (
    ResultsDb,
    add_results,
    open_results_db,
    schema_differences,
)

SETTINGS = OutboxSettings(
    max_attempts=3, max_age_s=3600, backoff_base_s=10, backoff_max_s=25, lease_s=60
)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[ResultsDb]:
    opened = open_results_db(f"sqlite:///{tmp_path / 'outbox.sqlite3'}", tmp_path / "storage")
    yield opened
    opened.engine.dispose()


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (StoreResponseStatus.SUCCESS, DeliveryOutcome.DELIVERED),
        (StoreResponseStatus.COERCION_OF_DATA_ELEMENTS, DeliveryOutcome.DELIVERED),
        (StoreResponseStatus.ELEMENTS_DISCARDED, DeliveryOutcome.DELIVERED),
        (StoreResponseStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING, DeliveryOutcome.DELIVERED),
        (StoreResponseStatus.ATTRIBUTE_VALUE_OUT_OF_RANGE, DeliveryOutcome.DELIVERED),
        (StoreResponseStatus.DUPLICATE_SOP_INSTANCE, DeliveryOutcome.DELIVERED),
        (StoreResponseStatus.OUT_OF_RESOURCES, DeliveryOutcome.RETRY),
        (0xA701, DeliveryOutcome.RETRY),
        (0xA7FF, DeliveryOutcome.RETRY),
        (StoreResponseStatus.PROCESSING_FAILURE, DeliveryOutcome.RETRY),
        (StoreResponseStatus.RESOURCE_LIMITATION, DeliveryOutcome.RETRY),
        (StoreResponseStatus.CANCEL, DeliveryOutcome.RETRY),
        (0xD123, DeliveryOutcome.RETRY),  # not defined by the standard: retry, then give up
        (StoreResponseStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, DeliveryOutcome.DEAD_LETTER),
        (0xA9FF, DeliveryOutcome.DEAD_LETTER),
        (StoreResponseStatus.CANNOT_UNDERSTAND, DeliveryOutcome.DEAD_LETTER),
        (0xC001, DeliveryOutcome.DEAD_LETTER),
        (0xCFFF, DeliveryOutcome.DEAD_LETTER),
        (StoreResponseStatus.SOP_CLASS_NOT_SUPPORTED, DeliveryOutcome.DEAD_LETTER),
        (StoreResponseStatus.NOT_AUTHORIZED, DeliveryOutcome.DEAD_LETTER),
        (StoreResponseStatus.NO_SUCH_SOP_CLASS, DeliveryOutcome.DEAD_LETTER),
    ],
)
def test_status_classification(status: int, outcome: DeliveryOutcome) -> None:
    assert classify_store_status(status) is outcome


@given(st.integers(min_value=0, max_value=0xFFFF))
def test_every_status_has_an_outcome(status: int) -> None:
    outcome = classify_store_status(status)
    if status >> 12 == 0xB:
        assert outcome is DeliveryOutcome.DELIVERED
    if status >> 12 == 0xC or status >> 8 == 0xA9:
        assert outcome is DeliveryOutcome.DEAD_LETTER


def test_status_outside_sixteen_bits_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bits"):
        classify_store_status(0x10000)


def test_claim_marks_rows_sending_and_counts_the_attempt(db: ResultsDb) -> None:
    add_results(db, 3, ["pacs"])
    claimed = claim_due(db.sessions, limit=2, lease_s=60)
    assert [d.attempt for d in claimed] == [1, 1]
    assert claim_due(db.sessions, limit=10, lease_s=60)[0].outbox_id not in {
        d.outbox_id for d in claimed
    }
    assert claim_due(db.sessions, limit=10, lease_s=60) == []
    assert outbox_depths(db.sessions)[OutboxState.SENDING] == 3


def test_retry_backs_off_exponentially_then_dead_letters(db: ResultsDb) -> None:
    add_results(db, 1, ["pacs"])
    now = utcnow()
    delays = []
    for attempt in (1, 2):
        (delivery,) = claim_due(db.sessions, limit=1, lease_s=60, now=now)
        assert delivery.attempt == attempt
        state = record_outcome(
            db.sessions,
            delivery,
            DeliveryOutcome.RETRY,
            SETTINGS,
            error="refused",
            now=now,
        )
        assert state is OutboxState.PENDING
        with db.sessions() as session:
            row = session.get_one(OutboxEntry, delivery.outbox_id)
        delays.append((row.next_attempt_at - now).total_seconds())
        assert claim_due(db.sessions, limit=1, lease_s=60, now=now) == []  # not yet due
        now = row.next_attempt_at
    assert delays == [10.0, 20.0]
    (delivery,) = claim_due(db.sessions, limit=1, lease_s=60, now=now)
    state = record_outcome(
        db.sessions, delivery, DeliveryOutcome.RETRY, SETTINGS, error="refused", now=now
    )
    assert state is OutboxState.DEAD_LETTER
    (view,) = list_outbox(db.sessions)
    assert view.attempts == 3
    assert view.last_error is not None
    assert "gave up after 3 attempts" in view.last_error


def test_backoff_is_capped(db: ResultsDb) -> None:
    add_results(db, 1, ["pacs"])
    settings = SETTINGS.model_copy(update={"max_attempts": 10})
    now = utcnow()
    delays = []
    for _ in range(5):
        (delivery,) = claim_due(db.sessions, limit=1, lease_s=60, now=now)
        record_outcome(db.sessions, delivery, DeliveryOutcome.RETRY, settings, now=now)
        with db.sessions() as session:
            due = session.get_one(OutboxEntry, delivery.outbox_id).next_attempt_at
        delays.append((due - now).total_seconds())
        now = due
    assert delays == [10.0, 20.0, 25.0, 25.0, 25.0]


def test_too_old_rows_become_dead_letters(db: ResultsDb) -> None:
    add_results(db, 1, ["pacs"])
    later = utcnow() + timedelta(seconds=SETTINGS.max_age_s + 1)
    (delivery,) = claim_due(db.sessions, limit=1, lease_s=60, now=later)
    state = record_outcome(db.sessions, delivery, DeliveryOutcome.RETRY, SETTINGS, now=later)
    assert state is OutboxState.DEAD_LETTER


def test_permanent_failure_is_a_dead_letter_at_once(db: ResultsDb) -> None:
    add_results(db, 1, ["pacs"])
    (delivery,) = claim_due(db.sessions, limit=1, lease_s=60)
    state = record_outcome(
        db.sessions,
        delivery,
        DeliveryOutcome.DEAD_LETTER,
        SETTINGS,
        status=StoreResponseStatus.CANNOT_UNDERSTAND,
        error="C-STORE status 0xC000",
    )
    assert state is OutboxState.DEAD_LETTER
    (view,) = list_outbox(db.sessions, OutboxState.DEAD_LETTER)
    assert (view.attempts, view.last_status) == (1, 0xC000)


def test_delivered_rows_are_sent(db: ResultsDb) -> None:
    add_results(db, 1, ["pacs"])
    (delivery,) = claim_due(db.sessions, limit=1, lease_s=60)
    record_outcome(db.sessions, delivery, DeliveryOutcome.DELIVERED, SETTINGS, status=0)
    (view,) = list_outbox(db.sessions, OutboxState.SENT)
    assert view.sent_at is not None
    assert view.last_status == 0
    assert claim_due(db.sessions, limit=10, lease_s=60) == []


def test_stale_sending_lease_is_retaken(db: ResultsDb) -> None:
    add_results(db, 1, ["pacs"])
    now = utcnow()
    (first,) = claim_due(db.sessions, limit=1, lease_s=30, now=now)
    assert claim_due(db.sessions, limit=1, lease_s=30, now=now + timedelta(seconds=29)) == []
    (again,) = claim_due(db.sessions, limit=1, lease_s=30, now=now + timedelta(seconds=31))
    assert again.outbox_id == first.outbox_id
    assert again.attempt == 2


def test_admin_retry_of_dead_letters(db: ResultsDb) -> None:
    add_results(db, 3, ["pacs", "ris"])
    with db.sessions() as session, session.begin():
        session.execute(update(OutboxEntry).values(state=OutboxState.DEAD_LETTER, attempts=8))
    ids = [view.id for view in list_outbox(db.sessions, OutboxState.DEAD_LETTER)]
    assert len(ids) == 6
    assert ids == sorted(ids, reverse=True)  # newest first
    assert retry_dead_letter(db.sessions, ids[0]) is True
    assert retry_dead_letter(db.sessions, ids[0]) is False  # no longer a dead letter
    assert retry_dead_letter(db.sessions, 10_000) is False
    assert retry_all_dead_letters(db.sessions, destination="ris") == 2
    assert retry_all_dead_letters(db.sessions) == 3
    with db.sessions() as session:
        rows = session.scalars(select(OutboxEntry)).all()
    assert {(r.state, r.attempts) for r in rows} == {(OutboxState.PENDING, 0)}
    assert len(claim_due(db.sessions, limit=10, lease_s=60)) == 6


def test_list_outbox_pages(db: ResultsDb) -> None:
    add_results(db, 5, ["pacs"])
    first = list_outbox(db.sessions, limit=2)
    second = list_outbox(db.sessions, limit=2, offset=2)
    assert len(first) == len(second) == 2
    assert not {v.id for v in first} & {v.id for v in second}
    assert all(v.kind == "sc" and v.state is OutboxState.PENDING for v in first)
    with pytest.raises(ValueError, match="limit"):
        list_outbox(db.sessions, limit=0)


def test_unique_delivery_per_object_and_destination(db: ResultsDb) -> None:
    from sqlalchemy.exc import IntegrityError

    add_results(db, 1, ["pacs"])
    with db.sessions() as session:
        row = session.scalars(select(OutboxEntry)).one()
    with pytest.raises(IntegrityError), db.sessions() as session, session.begin():
        session.add(OutboxEntry(result_object_id=row.result_object_id, destination="pacs"))


def test_sqlite_migration_matches_the_models(db: ResultsDb) -> None:
    assert schema_differences(db.engine, {"result_objects", "outbox"}) == []


def test_outcome_for_a_row_settled_by_another_sender_is_ignored(db: ResultsDb) -> None:
    add_results(db, 1, ["pacs"])
    now = utcnow()
    (slow,) = claim_due(db.sessions, limit=1, lease_s=1, now=now)
    (fast,) = claim_due(db.sessions, limit=1, lease_s=60, now=now + timedelta(seconds=2))
    record_outcome(db.sessions, fast, DeliveryOutcome.DELIVERED, SETTINGS, status=0)
    state = record_outcome(db.sessions, slow, DeliveryOutcome.RETRY, SETTINGS, error="timeout")
    assert state is OutboxState.SENT
    (view,) = list_outbox(db.sessions)
    assert (view.state, view.last_error) == (OutboxState.SENT, None)
