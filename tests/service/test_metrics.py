"""The Prometheus endpoint of a running daemon, scraped over real HTTP."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from inbound_mail.config.model import ParseOptions
from inbound_mail.config.reader import load_config
from inbound_mail.errors import ConfigError
from inbound_mail.models import RejectCode, Rejected, reject_code_for
from inbound_mail.parse.message import parse_email
from inbound_mail.service.metrics import create_metrics, reject_category
from inbound_mail.testing.emails import build_provider_email
from inbound_mail.testing.webhook_receiver import WebhookReceiver
from testsupport.mailbox import Mailbox

from helpers import REPO, in_process_daemon, rows, wait_until, write_config

FIXTURES = REPO / "fixtures"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_a_scrape_shows_storage_delivery_and_connection_figures(
    mailbox: Mailbox, tmp_path: Path
) -> None:
    db = tmp_path / "sms.db"
    number = "+393331234333"
    mailbox.append(build_provider_email("+393470000001", number, "20240501120000", "one"))
    mailbox.append(build_provider_email("+393470000002", number, "20240501120100", "two"))
    mailbox.append(build_provider_email("+393470000003", number, "20241399999999", "bad date"))
    account = mailbox.account(idle_deadline=5.0, connect_timeout=5.0)
    with WebhookReceiver() as receiver:
        receiver.fail(1)
        sinks = [{"name": "hook", "type": "webhook", "url": receiver.url, "retry_base": "0.1s"}]
        extra = '[metrics]\nlisten = "127.0.0.1:0"\n'
        config = write_config(tmp_path / "c.toml", [account], db=db, sinks=sinks, extra=extra)
        with in_process_daemon(config) as daemon:
            wait_until(lambda: daemon.metrics is not None and daemon.metrics.address, 10)
            assert daemon.metrics is not None and daemon.metrics.address is not None
            port = daemon.metrics.address[1]
            wait_until(
                lambda: (
                    rows(db, "SELECT count(*) FROM deliveries WHERE status = 'delivered'") == [(2,)]
                ),
                15,
            )
            samples = wait_until(lambda: _settled(scrape(port), account.name), 10)
            assert samples is not None
    name = account.name
    assert value(samples, "inbound_mail_sms_stored_total", account=name) == 2
    assert value(samples, "inbound_mail_sms_duplicates_total", account=name) == 0
    assert value(samples, "inbound_mail_deliveries_total", sink="hook", outcome="delivered") == 2
    assert value(samples, "inbound_mail_deliveries_total", sink="hook", outcome="failed") == 1
    assert value(samples, "inbound_mail_delivery_duration_seconds_count", sink="hook") == 3
    assert (
        value(samples, "inbound_mail_delivery_duration_seconds_bucket", sink="hook", le="5.0") == 3
    )
    assert value(samples, "inbound_mail_delivery_backlog", sink="hook") == 0
    assert value(samples, "inbound_mail_rejects_total", reason="invalid_date_time") == 1
    assert value(samples, "inbound_mail_account_connected", account=name) == 1
    assert value(samples, "inbound_mail_reconnects_total", account=name) == 0
    assert value(samples, "inbound_mail_idle_refreshes_total", account=name) == 0
    last = value(samples, "inbound_mail_last_sms_timestamp_seconds", destination=number)
    assert last == 1714557660.0, "2024-05-01 12:01:00 in Rome is 10:01:00 UTC"
    assert not any(n.startswith("inbound_mail") for n in REGISTRY._names_to_collectors), (
        "a registry of its own, never the global one"
    )


def _settled(samples: Samples, account: str) -> Samples | None:
    done = value(samples, "inbound_mail_deliveries_total", sink="hook", outcome="delivered")
    connected = value(samples, "inbound_mail_account_connected", account=account)
    return samples if done == 2 and connected == 1 else None


def test_reject_reasons_fall_into_a_fixed_set_of_categories() -> None:
    options = ParseOptions()
    categories = set()
    for expected in sorted(FIXTURES.glob("*.json")):
        if json.loads(expected.read_text())["outcome"] != "rejected":
            continue
        outcome = parse_email(expected.with_suffix(".eml").read_bytes(), options)
        assert isinstance(outcome, Rejected), expected.name
        categories.add(reject_category(outcome.code))
    assert "other" not in categories
    assert {"no_fields", "invalid_date_time", "missing_field"} <= categories
    assert reject_category("something new from a future parser") == "other"
    assert reject_code_for("something new from a future parser") == "malformed"


def test_listen_without_prometheus_client_is_a_clear_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(
        write_config(
            tmp_path / "c.toml",
            db=tmp_path / "s.db",
            extra='[metrics]\nlisten = "127.0.0.1:9464"\n',
        )
    )
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # what `import` sees when missing
    with pytest.raises(ConfigError) as caught:
        create_metrics(config, list)
    message = str(caught.value)
    assert "metrics.listen" in message and "pip install 'inbound-mail[metrics]'" in message


def test_a_taken_port_is_a_clear_config_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = load_config(
            write_config(
                tmp_path / "c.toml",
                db=tmp_path / "s.db",
                extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n',
            )
        )
        metrics = create_metrics(config, list)
        assert metrics is not None
        with pytest.raises(
            ConfigError, match=rf"metrics.listen: cannot listen on 127.0.0.1:{port}"
        ):
            metrics.serve(f"127.0.0.1:{port}")


def test_rejects_are_classified_by_their_code_where_it_says_why(tmp_path: Path) -> None:
    from inbound_mail.models import EmailOrigin
    from inbound_mail.store.db import Store
    from inbound_mail.store.rows import IngestItem

    db = tmp_path / "s.db"
    config = load_config(
        write_config(tmp_path / "c.toml", db=db, extra='[metrics]\nlisten = "127.0.0.1:0"\n')
    )
    coded: dict[RejectCode, str] = {
        "over_limit": "the header block is 70000 bytes; at most 65536 (worded otherwise later)",
        "parser_crash": "a future wording of a parser crash",
        "oversized": "a future wording of max_size",
        "unauthenticated": "no valid DKIM signature",
        "invalid_date_time": "invalid Date/Time '2024': expected 14 digits",
        "malformed": "a reason no code names",
    }
    items = [
        IngestItem(b"raw", Rejected(reason=reason, code=code), EmailOrigin("eml", path=f"/{n}"))
        for n, (code, reason) in enumerate(coded.items())
    ]
    with Store.open(db) as store:
        store.ingest(items)
    metrics = create_metrics(config, list)
    assert metrics is not None
    samples = {
        sample.labels["reason"]: sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == "inbound_mail_rejects_total"
    }
    assert samples == {
        "over_limit": 1,
        "parser_crash": 1,
        "too_large": 1,
        "unauthenticated": 1,
        "invalid_date_time": 1,
        "other": 1,
    }
