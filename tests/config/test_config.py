"""Config loading: defaults, the example file, and errors that name file, key and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from inbound_mail.config.model import default_db_path, parse_duration
from inbound_mail.config.reader import default_config_path, load_config
from inbound_mail.errors import ConfigError

from helpers import REPO

ROOT = REPO
ACCOUNT = '[[accounts]]\nname = "main"\nhost = "h"\nusername = "u"\npassword_env = "PW"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_config_is_valid_and_documents_defaults() -> None:
    config = load_config(ROOT / "config.example.toml")
    assert config.accounts[0].name == "main"
    assert config.accounts[0].idle_refresh == 600
    assert [s.type for s in config.sinks] == ["webhook", "webhook", "jsonl", "command"]
    assert config.sinks[1].filter.destinations == ("+393331234333",)
    assert config.parse.timezone == "Europe/Rome"


def test_no_file_gives_builtin_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    config = load_config(None)
    assert config.accounts == () and config.sinks == ()
    assert config.database.path == Path("inbound-mail.db")
    assert config.parse.senders == ("smsin@agiletelecom.com",)


def test_db_path_follows_systemd_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/inbound-mail:/other")
    assert default_db_path() == Path("/var/lib/inbound-mail/inbound-mail.db")


def test_db_override_wins(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, '[database]\npath = "a.db"\n'), db_override=tmp_path / "b.db"
    )
    assert config.database.path == tmp_path / "b.db"


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[database]\npath = "state/x.db"\n'))
    assert config.database.path == tmp_path / "state" / "x.db"


def test_config_path_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INBOUND_MAIL_CONFIG", raising=False)
    assert default_config_path() in (None, Path("/etc/inbound-mail/config.toml"))
    (tmp_path / "inbound-mail.toml").write_text("")
    assert default_config_path() == Path("inbound-mail.toml")
    monkeypatch.setenv("INBOUND_MAIL_CONFIG", "/x/y.toml")
    assert default_config_path() == Path("/x/y.toml")


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        (ACCOUNT + 'port = "993"\n', "accounts[0].port", "expected an integer"),
        (ACCOUNT + 'tls = "ssl"\n', "accounts[0].tls", '"implicit", "starttls" or "none"'),
        (ACCOUNT + 'after = "archive"\n', "accounts[0].after", "move:FOLDER"),
        (ACCOUNT + 'idle_refresh = "45m"\n', "accounts[0].idle_refresh", "from 10s to 29m"),
        (ACCOUNT + "bogus = 1\n", "accounts[0].bogus", "unknown key"),
        (
            '[[accounts]]\nname = "m"\nusername = "u"\npassword_env = "P"\n',
            "accounts[0].host",
            "required",
        ),
        (
            '[[accounts]]\nname = "m"\nhost = "h"\nusername = "u"\n',
            "accounts[0].password_file",
            "exactly one",
        ),
        (ACCOUNT + ACCOUNT, "accounts[1].name", "duplicate name"),
        ('[parse]\ntimezone = "Mars/Olympus"\n', "parse.timezone", "IANA time zone"),
        ('[log]\nlevel = "LOUD"\n', "log.level", "DEBUG, INFO"),
        ('[metrics]\nlisten = "nowhere"\n', "metrics.listen", "HOST:PORT"),
        ('[database]\nraw_retention = "forever"\n', "database.raw_retention", "a duration"),
        (
            '[[sinks]]\nname = "s"\ntype = "jsonl"\nfilter = { text_regex = "(" }\n',
            "sinks[0].filter.text_regex",
            "regular expression",
        ),
        (
            '[[sinks]]\nname = "s"\ntype = "jsonl"\nfilter = { number = "1" }\n',
            "sinks[0].filter.number",
            "unknown key",
        ),
        ("[unknown]\n", "unknown", "unknown key"),
        ("accounts = 3\n", "accounts", "array of tables"),
    ],
)
def test_errors_name_file_key_and_expectation(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert info.value.key == key, message
    assert expected in message


SINK = '[[sinks]]\nname = "s"\ntype = "jsonl"\npath = "-"\n'


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        (ACCOUNT + "port = 87587\n", "accounts[0].port", "an integer from 1 to 65535"),
        (ACCOUNT + "port = 0\n", "accounts[0].port", "an integer from 1 to 65535"),
        (ACCOUNT.replace('"h"', '""'), "accounts[0].host", "not empty"),
        (ACCOUNT.replace('"h"', '"a b"'), "accounts[0].host", "no spaces"),
        (ACCOUNT.replace('"u"', '" "'), "accounts[0].username", "non-empty"),
        (ACCOUNT + "idle_refresh = 0\n", "accounts[0].idle_refresh", "from 10s to 29m"),
        (ACCOUNT + "idle_deadline = 0\n", "accounts[0].idle_deadline", "from 1s to 29m"),
        (ACCOUNT + "connect_timeout = 0\n", "accounts[0].connect_timeout", "from 100ms to 10m"),
        (ACCOUNT + 'poll_interval = "0s"\n', "accounts[0].poll_interval", "from 1s to 1d"),
        (ACCOUNT + 'resync_interval = "2d"\n', "accounts[0].resync_interval", "from 1s to 1d"),
        (ACCOUNT + "fetch_batch = 0\n", "accounts[0].fetch_batch", "from 1 to 100000"),
        (ACCOUNT + "max_size = 10\n", "accounts[0].max_size", "from 1024 to 104857600"),
        ('[database]\nraw_retention = "101y"\n', "database.raw_retention", "a duration"),
        ('[database]\nraw_retention = "40000d"\n', "database.raw_retention", "0s to 36500d"),
        ("[status]\nheartbeat_stale = 0\n", "status.heartbeat_stale", "from 1s to 1d"),
        ("[status]\nslow_delivery = 0\n", "status.slow_delivery", "from 1ms to 1h"),
        ("[status]\nerror_rate = 2\n", "status.error_rate", "between 0 and 1"),
        (
            '[status.expect_within]\n"+39333" = "1s"\n',
            "status.expect_within.+39333",
            "from 1m to 366d",
        ),
        (SINK + "retry_base = 0\n", "sinks[0].retry_base", "from 1ms to 1h"),
        (SINK + 'retry_cap = "30d"\n', "sinks[0].retry_cap", "from 1ms to 7d"),
        (SINK + 'retry_base = "1m"\nretry_cap = "10s"\n', "sinks[0].retry_cap", "retry_base"),
        (SINK + "max_attempts = 0\n", "sinks[0].max_attempts", "from 1 to 100000"),
        (SINK + "max_age = 0\n", "sinks[0].max_age", "from 1s to 366d"),
        (SINK + "parallel = 65\n", "sinks[0].parallel", "from 1 to 64"),
        ('[metrics]\nlisten = "127.0.0.1:70000"\n', "metrics.listen", "port 0 to 65535"),
    ],
)
def test_every_number_has_a_range_named_in_the_error(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and info.value.key == key, message
    assert expected in message, message


@pytest.mark.parametrize(
    ("sink", "expected"),
    [
        ('type = "webhook"\nurl = "http://h"\ntimeout = "2h"\n', "at most 1h"),
        ('type = "command"\nargv = ["x"]\ntimeout = "2h"\n', "at most 1h"),
    ],
)
def test_sink_timeouts_have_a_range(tmp_path: Path, sink: str, expected: str) -> None:
    from inbound_mail.sinks import create_sink

    config = load_config(write(tmp_path, f'[[sinks]]\nname = "s"\n{sink}'))
    with pytest.raises(ConfigError) as info:
        create_sink(config.sinks[0])
    assert info.value.key == "sinks[0].timeout" and expected in str(info.value)


def test_invalid_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[database\n")
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 1"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (5, 5.0),
        (0.5, 0.5),
        ("30s", 30.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("250ms", 0.25),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", -1, True, "5 weeks"])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_sink_options_are_passed_through_and_filters_match(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[[sinks]]\nname = "w"\ntype = "webhook"\nurl = "http://x"\n'
            'parallel = 4\nfilter = { destinations = ["+391"], keywords = ["abcd"] }\n',
        )
    )
    sink = config.sinks[0]
    assert dict(sink.options) == {"url": "http://x"} and sink.parallel == 4
    from inbound_mail.models import SmsRecord

    hit = SmsRecord(
        "+1", "+391", "20240101000000", "2023-12-31T23:00:00Z", "ABCD hi", keyword="ABCD"
    )
    assert sink.filter.matches(hit)
    assert not sink.filter.matches(
        SmsRecord("+1", "+392", "20240101000000", "x", "ABCD hi", keyword="ABCD")
    )
    assert not sink.filter.matches(
        SmsRecord("+1", "+391", "20240101000000", "x", "hi", keyword=None)
    )
