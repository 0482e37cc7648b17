"""One source of truth for every default (issue 12, section 2): the reader passes
only the keys a file has, so the dataclass defaults apply; ``config.example.toml``
documents the same values."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from inbound_mail.config.model import (
    AccountConfig,
    Config,
    DatabaseConfig,
    LogConfig,
    MetricsConfig,
    ParseConfig,
    ParseOptions,
    RetryPolicy,
    SinkConfig,
    SinkFilter,
    StatusConfig,
    default_port,
)
from inbound_mail.config.reader import load_config

from helpers import REPO

EXAMPLE = REPO / "config.example.toml"
# Keys of the example that are not defaults: required values, or a choice to show.
EXAMPLE_VALUES = {"name", "host", "username", "password_file"}
SECTIONS: dict[str, Any] = {
    "database": DatabaseConfig(),
    "parse": ParseConfig(),
    "log": LogConfig(),
    "metrics": MetricsConfig(),
    "status": StatusConfig(),
}


def test_every_key_of_the_example_is_the_models_default() -> None:
    raw = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    config = load_config(EXAMPLE)
    compared = 0
    for section, default in SECTIONS.items():
        for key in raw.get(section, {}):
            assert getattr(getattr(config, section), key) == getattr(default, key), (
                f"config.example.toml [{section}] {key}"
            )
            compared += 1
    account = config.accounts[0]
    model = AccountConfig(name="x", host="x", username="x")
    for key in raw["accounts"][0]:
        if key not in EXAMPLE_VALUES:
            assert getattr(account, key) == getattr(model, key), f"[[accounts]] {key}"
            compared += 1
    assert compared >= 25  # the example keeps its keys uncommented


def test_a_file_with_only_required_keys_gets_the_models_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[[accounts]]\nname = "a"\nhost = "h"\nusername = "u"\npassword_env = "P"\n'
        '[[sinks]]\nname = "s"\ntype = "jsonl"\npath = "-"\n',
        encoding="utf-8",
    )
    config = load_config(path)
    for name in ("parse", "log", "metrics", "status"):
        assert getattr(config, name) == getattr(Config(), name)
    assert config.database.raw_retention == DatabaseConfig().raw_retention
    expected = AccountConfig(
        name="a", host="h", username="u", password_env="P", file=str(path), index=0
    )
    assert config.accounts[0] == expected
    sink = config.sinks[0]
    assert (sink.filter, sink.retry, sink.parallel) == (
        SinkFilter(),
        RetryPolicy(),
        SinkConfig(name="s", type="jsonl").parallel,
    )


def test_the_port_follows_the_tls_mode_and_the_default_mode_gives_the_default_port() -> None:
    assert AccountConfig(name="x", host="x", username="x").port == default_port(
        AccountConfig(name="x", host="x", username="x").tls
    )
    assert default_port("starttls") == default_port("none") == 143


def test_the_parsers_options_are_the_first_fields_of_parse() -> None:
    """One type: ``[parse]`` is the parser's options plus the trust keys."""
    assert isinstance(ParseConfig(), ParseOptions)
    shared = [f.name for f in fields(ParseOptions)]
    assert [f.name for f in fields(ParseConfig)][: len(shared)] == shared
