"""Upgrades lose nothing: a database written by schema v1 opens under the current code."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from inbound_mail.store import schema as _schema
from inbound_mail.store.db import Store

from helpers import REPO

V1 = REPO / "tests" / "data" / "schema_v1.sqlite"

# What tests/data/schema_v1.sqlite holds (written by the v1 code, see the commit that
# added it): two SMS, one reject, one owed delivery, one delivered, two pending acks.
V1_SMS = {
    "06118b1a0fcbdad41e772fdb9e0a715bd3868ee6b2c8d7efd4d7622077e9a933": "Ciao v1",
    "a35d36921865a976502df4fec28693b0f3b0450966e79c48918545d385f26c89": "Delivered v1",
}


def test_a_v1_database_keeps_every_id_reject_delivery_and_ack(tmp_path: Path) -> None:
    db = tmp_path / "v1.sqlite"
    shutil.copyfile(V1, db)
    db.chmod(0o600)  # as the earlier release created it (git checks files out 0644)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    with Store.open(db) as store:
        conn = store.database.conn
        assert conn.execute("PRAGMA user_version").fetchone()[0] == _schema.SCHEMA_VERSION
        messages = {row["id"]: row for row in store.messages()}
        assert {k: v["text"] for k, v in messages.items()} == V1_SMS
        # Mail stored before the check existed was never checked: NULL, not False.
        assert all(row["authenticated"] is None for row in messages.values())
        [reject] = list(store.rejects())
        assert (reject["id"], reject["reason"], reject["code"]) == (
            1,
            "missing field(s): To",
            "missing_field",  # coded by its reason on upgrade, as the parser codes it now
        )
        stored = store.get_reject(1)
        assert stored is not None and stored["raw"] == b"raw r"
        [owed] = store.pending_deliveries("hook")
        assert owed.record.id in V1_SMS and owed.record.authenticated is None
        assert [d["status"] for d in store.deliveries()] == ["pending", "delivered"]
        acks = store.pending_acks("main", "INBOX")
        assert [(a.uid, a.action) for a in acks] == [(1, "seen"), (3, "delete")]
        checkpoint = store.get_checkpoint("main", "INBOX")
        assert checkpoint is not None and checkpoint.last_uid == 3
