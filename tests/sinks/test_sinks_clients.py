"""The options the redis and nats sinks read the same way (inbound_mail.sinks.clients):
one table for both types; each sink's own options are tested in its own file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from inbound_mail.config.model import SinkConfig
from inbound_mail.errors import ConfigError
from inbound_mail.sinks import create_sink

from helpers import assert_bad_option

GOOD: dict[str, dict[str, Any]] = {
    "redis": {"url": "redis://127.0.0.1", "stream": "s"},
    "nats": {"url": "nats://127.0.0.1:4222", "stream": "SMS", "subject": "sms.in"},
}
SCHEMES = {"redis": "redis:// or rediss://", "nats": "nats:// or tls://"}


@pytest.mark.parametrize("sink_type", sorted(GOOD))
@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({"url": "http://x"}, "url", "{scheme}"),
        ({"url": None}, "url", "required"),
        ({"timeout": "1h"}, "timeout", "to 10m"),
        ({"timeout": "10ms"}, "timeout", "from 100ms"),
        ({"password_env": "A", "password_file": "/x"}, "password_env", "only one of"),
        ({"ca_file": "/no/such/ca.pem"}, "ca_file", "readable PEM CA bundle"),
        ({"maxlength": 3}, "maxlength", "unknown option"),
    ],
)
def test_the_shared_options_name_the_key(
    sink_type: str, options: dict[str, Any], key: str, problem: str
) -> None:
    assert_bad_option(
        sink_type, {**GOOD[sink_type], **options}, key, problem.format(scheme=SCHEMES[sink_type])
    )


def test_a_ca_file_that_is_not_pem_is_refused_at_load(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    for sink_type, good in GOOD.items():
        options = {**good, "ca_file": str(bogus)}
        assert_bad_option(sink_type, options, "ca_file", "readable PEM CA bundle")


@pytest.mark.parametrize("sink_type", sorted(GOOD))
def test_missing_extra_is_a_clear_config_error(
    sink_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, sink_type, None)  # what an install without the extra sees
    config = SinkConfig(name="bus", type=sink_type, options=GOOD[sink_type])
    with pytest.raises(ConfigError, match=rf"pip install 'inbound-mail\[{sink_type}\]'"):
        create_sink(config)
