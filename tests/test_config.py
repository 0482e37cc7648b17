"""Config loading: defaults, the example file, and errors that name file, key and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from inbound_mail.config import default_config_path, default_db_path, load_config, parse_duration
from inbound_mail.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
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
        (ACCOUNT + 'idle_refresh = "45m"\n', "accounts[0].idle_refresh", "at most 29 minutes"),
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
