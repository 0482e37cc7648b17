"""Trust only the provider (issue 10): real DKIM signatures, a real DNS server, over
``import`` and over IMAP; under ``require`` no forged email reaches any sink."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from inbound_mail.cli import cli
from inbound_mail.config.model import AuthMode
from inbound_mail.config.reader import load_config
from inbound_mail.models import Rejected, SmsRecord
from inbound_mail.parse.authenticity import Deferred, KeyResolver, TrustPolicy, Verifier
from inbound_mail.parse.message import parse_email
from inbound_mail.service.daemon import Daemon
from inbound_mail.testing.emails import build_provider_email
from testsupport.dkim import DkimKey, authentication_results, prepend_headers
from testsupport.dns import DnsServer
from testsupport.mailbox import Mailbox

from helpers import rows, toml_value, write_config

AUTHSERV = "mx.operator.test"
Case = Callable[[DkimKey], bytes]


def sms(text: str) -> bytes:
    return build_provider_email("+393301234567", "+393331234333", "20250101120000", text)


def received(by: str = AUTHSERV) -> bytes:
    return f"Received: from mail.evil.example by {by}; Wed, 1 Jan 2025 12:00:01 +0000\r\n".encode()


# Every case of issue 10 section 3 (and a few more): how to build it, authentic or not.
CASES: dict[str, tuple[Case, bool]] = {
    "forged, no signature": (lambda k: sms("forged no signature"), False),
    "valid signature": (lambda k: k.sign(sms("valid signature")), True),
    "body changed after signing": (
        lambda k: k.sign(sms("body before")).replace(b"body before", b"body after!"),
        False,
    ),
    "From header changed after signing": (
        lambda k: k.sign(sms("from changed")).replace(
            b"From: Agile Telecom <", b"From: Agile Telecon <"
        ),
        False,
    ),
    "d=evil.example on a provider From": (
        lambda k: k.sign(sms("evil domain"), domain="evil.example"),
        False,
    ),
    "signature with l= (text may be appended)": (
        lambda k: k.sign(sms("length tag"), length=True),
        False,
    ),
    "trusted dkim=pass": (
        lambda k: prepend_headers(
            sms("trusted dkim pass"),
            authentication_results(AUTHSERV, "dkim=pass header.d=agiletelecom.com"),
            received(),
        ),
        True,
    ),
    "trusted dmarc=pass": (
        lambda k: prepend_headers(
            sms("trusted dmarc pass"),
            authentication_results(AUTHSERV, "spf=pass; dmarc=pass header.from=agiletelecom.com"),
        ),
        True,
    ),
    "trusted dmarc=fail": (
        lambda k: prepend_headers(
            sms("trusted dmarc fail"),
            authentication_results(AUTHSERV, "dkim=none; dmarc=fail header.from=agiletelecom.com"),
        ),
        False,
    ),
    "forged dkim=pass below the server's own header": (
        lambda k: prepend_headers(
            sms("forged below"),
            authentication_results(AUTHSERV, "dkim=none; spf=softfail"),
            received(),
            authentication_results(AUTHSERV, "dkim=pass header.d=agiletelecom.com"),
        ),
        False,
    ),
    "forged dmarc=pass glued below the server's dmarc=fail": (
        lambda k: prepend_headers(
            sms("forged glued"),
            authentication_results(AUTHSERV, "dmarc=fail header.from=agiletelecom.com"),
            authentication_results(AUTHSERV, "dmarc=pass header.from=agiletelecom.com"),
        ),
        False,
    ),
    "authserv-id not configured": (
        lambda k: prepend_headers(
            sms("other authserv"),
            authentication_results(
                "mx.other.test",
                "dkim=pass header.d=agiletelecom.com; dmarc=pass header.from=agiletelecom.com",
            ),
        ),
        False,
    ),
    "trusted dkim=pass for another domain": (
        lambda k: prepend_headers(
            sms("trusted other domain"),
            authentication_results(AUTHSERV, "dkim=pass header.d=evil.example"),
        ),
        False,
    ),
}
AUTHENTIC = sorted(name for name, (_, ok) in CASES.items() if ok)
FORGED = sorted(name for name, (_, ok) in CASES.items() if not ok)


def parse_lines(dns: DnsServer, mode: str = "require", timeout: float = 2.0) -> str:
    return (
        "[parse]\n"
        f"authenticate = {toml_value(mode)}\n"
        f"authserv_ids = {toml_value([AUTHSERV])}\n"
        f"dns_servers = {toml_value([dns.address])}\n"
        f"dns_timeout = {toml_value(timeout)}\n"
    )


def invoke(config: Path, *args: str) -> Result:
    result = CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
    return result


def jsonl_texts(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def verifier(dns: DnsServer, mode: AuthMode = "require", timeout: float = 2.0) -> Verifier:
    policy = TrustPolicy(mode, (AUTHSERV,))
    return Verifier(policy, KeyResolver([dns.address], timeout=timeout))


# -- each case, judged -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_case_is_judged(name: str, dkim_key: DkimKey, dns_server: DnsServer) -> None:
    build, authentic = CASES[name]
    raw = build(dkim_key)
    outcome = verifier(dns_server).check(raw, parse_email(raw))
    if authentic:
        assert isinstance(outcome, SmsRecord), outcome
        assert outcome.authenticated is True and outcome.auth_reason
    else:
        assert isinstance(outcome, Rejected), outcome
        assert outcome.code == "unauthenticated"
        assert outcome.reason.startswith("unauthenticated: ")
        assert outcome.evidence and "DKIM:" in outcome.evidence
        assert "Authentication-Results" in outcome.evidence


def test_a_foreign_signing_domain_is_never_looked_up(
    dkim_key: DkimKey, dns_server: DnsServer
) -> None:
    # Even a key that exists and verifies: d=evil.example is not the provider.
    dns_server.set_txt("test._domainkey.evil.example", dkim_key.txt)
    raw = dkim_key.sign(sms("evil lookup"), domain="evil.example")
    outcome = verifier(dns_server).check(raw, parse_email(raw))
    assert isinstance(outcome, Rejected)
    assert dns_server.count("test._domainkey.evil.example") == 0


def test_the_key_is_cached_one_query_per_ttl(dkim_key: DkimKey, dns_server: DnsServer) -> None:
    check = verifier(dns_server)
    before = dns_server.count(dkim_key.record_name)
    for n in range(5):
        raw = dkim_key.sign(sms(f"cached {n}"))
        assert isinstance(check.check(raw, parse_email(raw)), SmsRecord)
    assert dns_server.count(dkim_key.record_name) == before + 1


def test_dns_failures_are_temporary_and_a_missing_key_is_a_dkim_failure(
    dns_server: DnsServer,
) -> None:
    key = DkimKey.generate(selector="rotating")
    key.publish(dns_server)
    raw = key.sign(sms("rotating key"))
    with dns_server.behaving(key.record_name, "servfail"):
        assert isinstance(verifier(dns_server).check(raw, parse_email(raw)), Deferred)
    with dns_server.behaving(key.record_name, "drop"):
        outcome = verifier(dns_server, timeout=0.3).check(raw, parse_email(raw))
        assert isinstance(outcome, Deferred) and "timed out" in outcome.reason
    with dns_server.behaving(key.record_name, "nxdomain"):
        outcome = verifier(dns_server).check(raw, parse_email(raw))
        assert isinstance(outcome, Rejected) and "no key in DNS" in (outcome.evidence or "")
        # Old mail after a key rotation: the server's verdict of the day still counts.
        with_ar = prepend_headers(
            raw, authentication_results(AUTHSERV, "dkim=pass header.i=@agiletelecom.com")
        )
        assert isinstance(verifier(dns_server).check(with_ar, parse_email(with_ar)), SmsRecord)
    assert isinstance(verifier(dns_server).check(raw, parse_email(raw)), SmsRecord)


def test_off_checks_nothing_and_report_marks(dkim_key: DkimKey, dns_server: DnsServer) -> None:
    raw = sms("unsigned")
    assert verifier(dns_server, "off").check(raw, parse_email(raw)) == parse_email(raw)
    reported = verifier(dns_server, "report").check(raw, parse_email(raw))
    assert isinstance(reported, SmsRecord) and reported.authenticated is False
    assert reported.auth_reason and "no valid DKIM signature" in reported.auth_reason


# -- over `import` ----------------------------------------------------------------------------


def test_import_stores_only_authentic_mail_and_delivers_nothing_forged(
    tmp_path: Path, dkim_key: DkimKey, dns_server: DnsServer
) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    for i, name in enumerate(sorted(CASES)):
        (folder / f"{i:02d}.eml").write_bytes(CASES[name][0](dkim_key))
    db, out = tmp_path / "sms.db", tmp_path / "out.jsonl"
    sink = {"name": "file", "type": "jsonl", "path": str(out)}
    config = write_config(tmp_path / "c.toml", db=db, sinks=[sink], extra=parse_lines(dns_server))
    result = invoke(config, "import", str(folder))
    assert result.exit_code == 0, result.output
    assert f"{len(AUTHENTIC)} new" in result.output
    assert f"{len(FORGED)} rejected" in result.output
    stored = rows(db, "SELECT authenticated FROM messages")
    assert stored == [(1,)] * len(AUTHENTIC)
    codes = rows(db, "SELECT code, evidence IS NOT NULL FROM rejects")
    assert codes == [("unauthenticated", 1)] * len(FORGED)
    assert rows(db, "SELECT count(*) FROM deliveries") == [(len(AUTHENTIC),)]
    config_obj = load_config(config)
    assert Daemon(config_obj).run_once().exit_code == 0
    texts = jsonl_texts(out)
    assert len(texts) == len(AUTHENTIC)
    assert not any("forged" in t or "evil" in t or "other" in t for t in texts)
    assert all(json.loads(line)["authenticated"] is True for line in out.read_text().splitlines())


def test_import_defers_on_servfail_then_stores_once(tmp_path: Path, dns_server: DnsServer) -> None:
    key = DkimKey.generate(selector="importfail")
    key.publish(dns_server)
    eml = tmp_path / "one.eml"
    eml.write_bytes(key.sign(sms("servfail import")))
    db = tmp_path / "sms.db"
    config = write_config(tmp_path / "c.toml", db=db, extra=parse_lines(dns_server))
    with dns_server.behaving(key.record_name, "servfail"):
        result = invoke(config, "import", str(eml))
    assert result.exit_code == 0, result.output
    assert "1 deferred" in result.output
    assert rows(db, "SELECT count(*) FROM messages") == [(0,)]
    assert rows(db, "SELECT count(*) FROM rejects") == [(0,)], "never rejected for a DNS failure"
    # Parsed fine, then held back: no in-flight row that a later start would take
    # for a parser crash (inbound_mail.sources.inflight).
    assert rows(db, "SELECT count(*) FROM parsing") == [(0,)]
    for _ in range(2):
        assert invoke(config, "import", str(eml)).exit_code == 0
    assert rows(db, "SELECT text, authenticated FROM messages") == [("servfail import", 1)]


# -- over IMAP ---------------------------------------------------------------------------------


def imap_config(
    tmp_path: Path, mailbox: Mailbox, dns: DnsServer, *, mode: str = "require"
) -> tuple[Path, Path, Path]:
    db, out = tmp_path / "sms.db", tmp_path / "out.jsonl"
    # helpers.write_config writes every account field, so the account names its own ids.
    account = mailbox.account(authenticate=mode, authserv_ids=(AUTHSERV,), after="delete")
    sink = {"name": "file", "type": "jsonl", "path": str(out)}
    config = write_config(
        tmp_path / "c.toml", [account], db=db, sinks=[sink], extra=parse_lines(dns)
    )
    return config, db, out


def run_once(config: Path) -> None:
    assert Daemon(load_config(config)).run_once().exit_code == 0


def test_over_imap_forged_mail_is_rejected_left_in_place_and_never_delivered(
    mailbox: Mailbox, tmp_path: Path, dkim_key: DkimKey, dns_server: DnsServer
) -> None:
    uids = {name: mailbox.append(CASES[name][0](dkim_key)) for name in sorted(CASES)}
    config, db, out = imap_config(tmp_path, mailbox, dns_server)
    run_once(config)
    assert sorted(jsonl_texts(out)) == sorted(t for (t,) in rows(db, "SELECT text FROM messages"))
    assert len(jsonl_texts(out)) == len(AUTHENTIC)
    rejected = rows(db, "SELECT uid, code FROM rejects ORDER BY uid")
    assert rejected == sorted((uids[name], "unauthenticated") for name in FORGED)
    # Authentic mail was acknowledged (after = "delete"); forged mail is left as it was.
    assert sorted(mailbox.uids()) == sorted(uids[name] for name in FORGED)
    assert not any(mailbox.flags().values()), "no flag set on rejected mail"
    run_once(config)
    assert len(jsonl_texts(out)) == len(AUTHENTIC), "a second pass delivers nothing more"
    assert rows(db, "SELECT count(*) FROM rejects") == [(len(FORGED),)]


def test_over_imap_servfail_leaves_the_email_and_a_later_pass_stores_it_once(
    mailbox: Mailbox, tmp_path: Path, dns_server: DnsServer, dkim_key: DkimKey
) -> None:
    key = DkimKey.generate(selector="imapfail")
    key.publish(dns_server)
    first = mailbox.append(key.sign(sms("servfail first")))
    after = mailbox.append(dkim_key.sign(sms("after the failing one")))
    config, db, out = imap_config(tmp_path, mailbox, dns_server)
    with dns_server.behaving(key.record_name, "servfail"):
        run_once(config)
        assert jsonl_texts(out) == ["after the failing one"], "later mail still flows"
        assert rows(db, "SELECT count(*) FROM rejects") == [(0,)]
        assert rows(db, "SELECT count(*) FROM parsing") == [(0,)], "held back, not in flight"
        assert mailbox.uids() == [first], "unacknowledged"
        assert rows(db, "SELECT last_uid FROM checkpoints") == [(first - 1,)] or rows(
            db, "SELECT count(*) FROM checkpoints"
        ) == [(0,)], "the checkpoint stays below the deferred email"
    run_once(config)
    assert jsonl_texts(out) == ["after the failing one", "servfail first"]
    assert mailbox.uids() == []
    [(last_uid,)] = rows(db, "SELECT last_uid FROM checkpoints")
    assert first <= last_uid <= after, "past the deferred email now (known UIDs are skipped)"
    run_once(config)
    assert len(jsonl_texts(out)) == 2, "stored and delivered once"


def test_report_stores_and_delivers_with_the_verdict(
    mailbox: Mailbox, tmp_path: Path, dns_server: DnsServer
) -> None:
    mailbox.append(sms("reported forgery"))
    config, db, out = imap_config(tmp_path, mailbox, dns_server, mode="report")
    run_once(config)
    [line] = [json.loads(x) for x in out.read_text().splitlines()]
    assert line["authenticated"] is False and "no valid DKIM" in line["auth_reason"]
    assert rows(db, "SELECT authenticated FROM messages") == [(0,)]
    status = invoke(config, "status")
    assert "not authenticated" in status.output, status.output


def test_a_release_stores_and_delivers_once(
    tmp_path: Path, dns_server: DnsServer, caplog: pytest.LogCaptureFixture
) -> None:
    eml = tmp_path / "one.eml"
    eml.write_bytes(sms("released after review"))
    db, out = tmp_path / "sms.db", tmp_path / "out.jsonl"
    sink = {"name": "file", "type": "jsonl", "path": str(out)}
    config = write_config(tmp_path / "c.toml", db=db, sinks=[sink], extra=parse_lines(dns_server))
    assert invoke(config, "import", str(eml)).exit_code == 0
    [(reject_id,)] = rows(db, "SELECT id FROM rejects WHERE code = 'unauthenticated'")
    shown = invoke(config, "rejects", "--show", str(reject_id))
    assert "unauthenticated" in shown.output and "DKIM: none" in shown.output
    with caplog.at_level("WARNING"):
        first = invoke(config, "rejects", "--release", str(reject_id))
    assert first.exit_code == 0, first.output
    assert "reject.released" in caplog.text
    again = invoke(config, "rejects", "--release", str(reject_id))
    assert again.exit_code == 0 and "already released" in again.output
    run_once(config)
    run_once(config)
    assert jsonl_texts(out) == ["released after review"]
    [(authenticated, reason)] = rows(db, "SELECT authenticated, auth_reason FROM messages")
    assert authenticated == 0 and "released by the operator" in reason
    assert invoke(config, "rejects", "--release", "999").exit_code == 1


# -- check ---------------------------------------------------------------------------------------


def test_check_judges_the_latest_provider_mail(
    mailbox: Mailbox, tmp_path: Path, dkim_key: DkimKey, dns_server: DnsServer
) -> None:
    config, _, _ = imap_config(tmp_path, mailbox, dns_server)
    empty = invoke(config, "check")
    assert "no provider email in 'INBOX' yet" in empty.output
    assert "authserv-id" in empty.output
    mailbox.append(dkim_key.sign(sms("check signed")))
    mailbox.append(CASES["trusted dkim=pass"][0](dkim_key))
    mailbox.append(sms("check forged"))
    result = invoke(config, "check")
    trust = [line for line in result.output.splitlines() if " trust: " in line]
    assert len(trust) == 3, result.output
    assert trust[0].startswith("ok") and "DKIM: pass d=agiletelecom.com" in trust[0]
    assert trust[1].startswith("ok") and f"trusted {AUTHSERV}: dkim=pass" in trust[1]
    assert trust[2].startswith("FAIL") and "require would REJECT" in trust[2]
    assert result.exit_code == 1
    assert mailbox.flags() == {uid: frozenset() for uid in mailbox.uids()}, "nothing marked"


def test_unauthenticated_rejects_have_a_metric_category() -> None:
    from inbound_mail.models import reject_code_for
    from inbound_mail.service.metrics import reject_category

    assert reject_code_for("unauthenticated: no valid DKIM signature") == "unauthenticated"
    assert reject_category("unauthenticated") == "unauthenticated"


# -- the issue's scenario, every sink ------------------------------------------------------------

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_the_forged_email_of_issue_10_reaches_no_sink_and_stays_in_the_mailbox(
    mailbox: Mailbox, tmp_path: Path, dkim_key: DkimKey, dns_server: DnsServer
) -> None:
    from inbound_mail.testing.webhook_receiver import WebhookReceiver

    forged = prepend_headers(
        sms("Forged: reply with the one-time code"),
        authentication_results(
            AUTHSERV, "dkim=none; spf=fail; dmarc=fail header.from=agiletelecom.com"
        ),
    )
    real = dkim_key.sign(sms("Real: your order shipped"))
    forged_uid = mailbox.append(forged)
    mailbox.append(real)
    db, out, ran = tmp_path / "sms.db", tmp_path / "out.jsonl", tmp_path / "ran.txt"
    program = tmp_path / "handler.sh"
    program.write_text(f'#!/bin/sh\necho "$INBOUND_SMS_TEXT" >> {ran}\n')
    program.chmod(0o700)
    account = mailbox.account(authserv_ids=(AUTHSERV,), after="delete", authenticate="require")
    with WebhookReceiver() as receiver:
        sinks: list[dict[str, object]] = [
            {"name": "hook", "type": "webhook", "url": receiver.url, "format": "json",
             "secret": WHSEC},
            {"name": "file", "type": "jsonl", "path": str(out)},
            {"name": "script", "type": "command", "argv": [str(program)]},
        ]  # fmt: skip
        config = write_config(
            tmp_path / "c.toml", [account], db=db, sinks=sinks, extra=parse_lines(dns_server)
        )
        run_once(config)
        posted = [r.json()["text"] for r in receiver.requests]
    assert posted == ["Real: your order shipped"]
    assert jsonl_texts(out) == ["Real: your order shipped"]
    assert ran.read_text().splitlines() == ["Real: your order shipped"]
    [(code, reason)] = rows(db, "SELECT code, reason FROM rejects")
    assert code == "unauthenticated" and "dmarc=fail" in reason
    assert mailbox.uids() == [forged_uid], "the forged email is left, not deleted"


def test_backfill_of_old_mail_relies_on_the_servers_verdict(
    mailbox: Mailbox, tmp_path: Path, dns_server: DnsServer
) -> None:
    # The provider rotated its key: the old selector is gone from DNS (NXDOMAIN).
    old_key = DkimKey.generate(selector="retired2019")
    signed_then = old_key.sign(sms("from before the rotation"))
    mailbox.append(
        prepend_headers(
            signed_then,
            authentication_results(AUTHSERV, "dkim=pass header.d=agiletelecom.com"),
        )
    )
    mailbox.append(old_key.sign(sms("same key, no verdict kept")))
    config, db, _ = imap_config(tmp_path, mailbox, dns_server)
    result = invoke(config, "backfill", "--account", mailbox.user, "--no-deliver")
    assert result.exit_code == 0, result.output
    assert rows(db, "SELECT text, authenticated FROM messages") == [("from before the rotation", 1)]
    [(evidence,)] = rows(db, "SELECT evidence FROM rejects")
    assert "no key in DNS" in evidence


def test_backfill_counts_a_deferred_email_in_its_summary(
    mailbox: Mailbox, tmp_path: Path, dns_server: DnsServer, dkim_key: DkimKey
) -> None:
    key = DkimKey.generate(selector="backfillfail")
    key.publish(dns_server)
    mailbox.append(key.sign(sms("servfail backfill")))
    mailbox.append(dkim_key.sign(sms("authentic backfill")))
    config, db, _ = imap_config(tmp_path, mailbox, dns_server)
    with dns_server.behaving(key.record_name, "servfail"):
        result = invoke(config, "backfill", "--account", mailbox.user, "--no-deliver")
    assert result.exit_code == 0, result.output
    assert "2 read, 1 new" in result.output
    assert "1 deferred (DNS failed: left in the folder: run backfill again later)" in result.output
    assert rows(db, "SELECT text FROM messages") == [("authentic backfill",)]


@pytest.mark.parametrize(
    "header",
    [
        b"DKIM-Signature: garbage\r\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=agiletelecom.com; s=; h=from; bh=; b=\r\n",
        b"DKIM-Signature: v=1; a=nope; d=agiletelecom.com; s=test; h=from; bh=AA==; b=AA==\r\n",
        b"DKIM-Signature: " + b"x=y; " * 5000 + b"\r\n",
        b"Authentication-Results: ;;;; dkim=pass\r\n",
        b"Authentication-Results: " + AUTHSERV.encode() + b"; dkim=pass header.d=\xff\xfe\r\n",
        b"Authentication-Results: " + AUTHSERV.encode() + b"; " + b"dkim=pass; " * 3000 + b"\r\n",
    ],
)
def test_hostile_headers_are_a_failed_check_never_a_crash(
    header: bytes, dns_server: DnsServer
) -> None:
    raw = header + sms("hostile")
    # The SMS parsed from the email without the header: a header over a limit of
    # the pre-parse gate (inbound_mail.parse.limits) makes parse_email itself a
    # reject, and the verifier must still cope with it on its own.
    outcome = verifier(dns_server).check(raw, parse_email(sms("hostile")))
    assert isinstance(outcome, Rejected) and outcome.code == "unauthenticated", outcome


# -- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('authenticate = "yes"', "parse.authenticate", '"require", "report" or "off"'),
        ("dns_timeout = 120", "parse.dns_timeout", "from 0.1 to 60 seconds"),
        ('dns_servers = ["dns.example.com"]', "parse.dns_servers", "not a name"),
        ('dns_servers = ["127.0.0.1:99999"]', "parse.dns_servers", "1-65535"),
        ("dkim_domains = []", "parse.dkim_domains", "at least one domain"),
        ('authserv_ids = ["mx example"]', "parse.authserv_ids", "not an authserv-id"),
    ],
)
def test_trust_settings_are_validated(tmp_path: Path, text: str, key: str, expected: str) -> None:
    from inbound_mail.errors import ConfigError

    path = tmp_path / "c.toml"
    path.write_text(f"[parse]\n{text}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert key in str(info.value) and expected in str(info.value) and str(path) in str(info.value)


def test_defaults_require_and_accounts_inherit_or_override(tmp_path: Path) -> None:
    assert load_config(None).parse.authenticate == "require"
    path = tmp_path / "c.toml"
    account = '[[accounts]]\nname = "{}"\nhost = "h"\nusername = "u"\npassword_env = "P"\n'
    path.write_text(
        '[parse]\nauthserv_ids = ["MX.Example"]\n'
        + account.format("a")
        + account.format("b")
        + 'authenticate = "report"\ndkim_domains = ["sms.agiletelecom.com"]\n'
    )
    a, b = load_config(path).accounts
    assert (a.authenticate, a.authserv_ids, a.dkim_domains) == (
        "require",
        ("mx.example",),
        ("agiletelecom.com",),
    )
    assert (b.authenticate, b.dkim_domains) == ("report", ("sms.agiletelecom.com",))
