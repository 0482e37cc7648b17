"""The dedup id: one SMS, one id; different SMS, different ids; email metadata never counts."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from inbound_mail.models import DEDUP_FIELDS, SmsRecord, Tally, dedup_id
from inbound_mail.store.rows import IngestResult

FIELD = st.text(max_size=12)  # includes lone surrogates: the id must not fail on them
TUPLES = st.tuples(FIELD, FIELD, FIELD, FIELD)


def test_dedup_fields_are_the_sms_fields() -> None:
    assert DEDUP_FIELDS == ("originator", "destination", "date_time", "text")


def test_known_concatenation_collisions_are_distinct() -> None:
    assert dedup_id("1", "23", "x", "y") != dedup_id("12", "3", "x", "y")
    assert dedup_id("", "", "", "ab") != dedup_id("", "", "a", "b")
    assert dedup_id("a\x00", "b", "", "") != dedup_id("a", "\x00b", "", "")
    assert dedup_id("a", "b", "c", "d") != dedup_id("d", "c", "b", "a")


def test_id_is_hex_sha256_and_stable() -> None:
    value = dedup_id("+393301234567", "+393331234333", "20150525154559", "News ON")
    assert re.fullmatch(r"[0-9a-f]{64}", value)
    # Pinned: the id is stored and must never change between releases.
    assert value == "8ed8f25eb32d75ed8764b35f389c221cee0c925f24e0a17750680c6b69bcb149"


@settings(max_examples=300)
@given(TUPLES, TUPLES)
def test_different_tuples_never_share_an_id(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    if a != b:
        assert dedup_id(*a) != dedup_id(*b)
    else:
        assert dedup_id(*a) == dedup_id(*b)


@settings(max_examples=300)
@given(TUPLES, st.integers(min_value=0, max_value=3), st.integers(min_value=1, max_value=3))
def test_moving_characters_between_fields_changes_the_id(
    fields: tuple[str, ...], index: int, shift: int
) -> None:
    joined = "".join(fields)
    moved = list(fields)
    if index < 3 and moved[index + 1]:
        # Move the first characters of the next field to the end of this one.
        moved[index] += moved[index + 1][:shift]
        moved[index + 1] = moved[index + 1][shift:]
    if tuple(moved) != fields:
        assert "".join(moved) == joined
        assert dedup_id(*moved) != dedup_id(*fields)


@settings(max_examples=200)
@given(
    TUPLES,
    st.none() | st.text(max_size=20),
    st.none() | st.text(max_size=20),
    st.none() | st.text(max_size=8),
)
def test_id_ignores_email_metadata(
    fields: tuple[str, str, str, str],
    message_id: str | None,
    subject: str | None,
    keyword: str | None,
) -> None:
    originator, destination, date_time, text = fields
    plain = SmsRecord(originator, destination, date_time, "2015-05-25T13:45:59Z", text)
    dressed = SmsRecord(
        originator,
        destination,
        date_time,
        "1999-01-01T00:00:00Z",
        text,
        keyword=keyword,
        message_id=message_id,
        email_date="2015-05-25T13:46:01Z",
        subject=subject,
        sender="smsin@agiletelecom.com",
    )
    assert plain.id == dressed.id == dedup_id(*fields)
    assert dressed.to_dict()["id"] == plain.id


def test_a_tally_counts_outcomes_batches_and_other_tallies() -> None:
    tally = Tally()
    tally.add("new")
    tally.add("rejected", 2)
    batch = IngestResult(new=[], duplicates=[], skipped=3, rejected=1)
    tally.add_batch(batch, deferred=4)
    other = Tally(new=1, duplicates=1)
    tally.merge(other)
    assert tally == Tally(new=2, duplicates=1, skipped=3, rejected=3, deferred=4)
    assert tally.read == 13
    assert other == Tally(new=1, duplicates=1), "merge leaves the other tally alone"


def test_a_tally_shows_deferred_only_when_there_are_some() -> None:
    assert "deferred" not in " ".join(Tally(new=1).as_dict())
    counts = Tally(deferred=2).as_dict(deferred_hint="try later")
    assert counts["deferred (DNS failed: try later)"] == 2
