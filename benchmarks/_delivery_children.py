"""The delivery benchmark's child processes (see ``delivery_bench.py``).

    python benchmarks/_delivery_children.py MODE SPEC.json

``worker``        ``DeliveryWorker.run_once()`` over the queued database
``bare``          the same sink's bare work for the same records, nothing recorded
``sink``          the sink object's own ``deliver`` for the same records, no outbox
``capacity``      bare ``http.client`` POSTs: what the receiver can take
``latency``       a DeliveryWorker thread; one ``Store.ingest`` + ``wake()`` at a time
``latency-bare``  bare httpx POSTs, timestamped just before ``post()``
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import child_report

from inbound_mail.config.model import SinkConfig
from inbound_mail.models import EmailOrigin, SmsRecord
from inbound_mail.store.db import Store
from inbound_mail.store.rows import IngestItem

SECRET = "whsec_" + base64.b64encode(b"inbound-mail benchmark key 32 b!").decode()
SINK = "bench"


def record(index: int) -> SmsRecord:
    return SmsRecord(
        originator=f"+39{3300000000 + index}",
        destination="+393331234333",
        date_time="20240501120000",
        received_at="2024-05-01T10:00:00Z",
        text=f"bench {index} {time.time_ns()} caffè già più, offerta €10",
        message_id=f"<bench-{index}@smsin.agiletelecom.com>",
        subject="Agile Telecom -- SMS received",
        sender="smsin@agiletelecom.com",
    )


def _item(index: int) -> IngestItem:
    return IngestItem(b"(raw email)", record(index), EmailOrigin("eml", path=f"/bench/{index}.eml"))


def make_db(path: Path, count: int) -> None:
    """A database with ``count`` SMS, each queued for the sink ``bench``."""
    with Store.open(path) as store:
        for start in range(0, count, 1000):
            items = [_item(i) for i in range(start, min(count, start + 1000))]
            store.ingest(items, route=lambda _r: [SINK])


def _records(db: Path) -> list[SmsRecord]:
    with Store.open(db) as store:
        return [d.record for d in store.pending_deliveries(SINK, limit=1_000_000)]


def _config(spec: dict[str, Any]) -> SinkConfig:
    return SinkConfig(
        name=SINK, type=spec["type"], options=spec["options"], parallel=spec["parallel"]
    )


# -- throughput -------------------------------------------------------------------------------


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    from inbound_mail.delivery import DeliveryWorker

    commits = [0]
    record_attempts = Store.record_attempts

    def counted(self: Store, attempts: Any) -> None:  # observes, changes nothing
        commits[0] += 1
        record_attempts(self, attempts)

    Store.record_attempts = counted  # type: ignore[method-assign]  # counts, as above
    delivery = DeliveryWorker(Path(spec["db"]), _config(spec))
    started = time.perf_counter()
    result = delivery.run_once()
    seconds = time.perf_counter() - started
    delivery.close()
    return {
        "delivered": result.delivered,
        "failed": result.failed + result.dead,
        "work_seconds": seconds,
        "commits": commits[0],
    }


def sink_alone(spec: dict[str, Any]) -> dict[str, Any]:
    """The sink object's own ``deliver`` (and ``flush`` every 100), without the outbox."""
    from inbound_mail.delivery import AttemptContext
    from inbound_mail.sinks import create_sink

    records = _records(Path(spec["db"]))
    sink = create_sink(_config(spec))
    context = AttemptContext(delivery_id=1, attempt=1)
    started = time.perf_counter()
    if spec["parallel"] == 1:
        for index, rec in enumerate(records, 1):
            sink.deliver(rec, context)
            if index % 100 == 0:
                sink.flush()
    else:
        with ThreadPoolExecutor(spec["parallel"]) as pool:
            list(pool.map(lambda rec: sink.deliver(rec, context), records))
    sink.flush()
    seconds = time.perf_counter() - started
    sink.close()
    return {"delivered": len(records), "work_seconds": seconds}


def bare(spec: dict[str, Any]) -> dict[str, Any]:
    records = _records(Path(spec["db"]))
    if spec["type"] == "nats":
        return _bare_nats(spec, records)
    send, finish = _bare_sender(spec)
    started = time.perf_counter()
    if spec["parallel"] == 1:
        for rec in records:
            send(rec)
    else:
        with ThreadPoolExecutor(spec["parallel"]) as pool:
            list(pool.map(send, records))
    finish()
    return {"delivered": len(records), "work_seconds": time.perf_counter() - started}


def _bare_sender(spec: dict[str, Any]) -> tuple[Callable[[SmsRecord], None], Callable[[], None]]:
    options = spec["options"]
    if spec["type"] == "webhook":
        return _http_sender(options["url"], options["format"], spec["parallel"])
    if spec["type"] == "jsonl":
        return _jsonl_sender(options["path"])
    if spec["type"] == "redis":
        return _redis_sender(options)
    return _command_sender(options["argv"])


def _redis_sender(
    options: dict[str, Any],
) -> tuple[Callable[[SmsRecord], None], Callable[[], None]]:
    """redis-py's plain XADD of the same two fields, the reply being the acknowledgement."""
    import redis

    password = Path(options["password_file"]).read_text().strip()
    # The same socket timeout as the sink's default: a timeout per attempt is part of
    # the work (and costs a poll() per read), as httpx's default 5 s is for webhooks.
    client = redis.Redis.from_url(options["url"], password=password, socket_timeout=30.0)
    stream = options["stream"]

    def send(rec: SmsRecord) -> None:
        client.xadd(stream, {"id": rec.id, "json": json.dumps(rec.to_dict(), ensure_ascii=False)})

    return send, client.close


def _bare_nats(spec: dict[str, Any], records: list[SmsRecord]) -> dict[str, Any]:
    """nats-py on its own asyncio loop: JetStream publishes with Nats-Msg-Id, each
    awaiting its PubAck; with ``parallel`` N, N publishes in flight."""
    import asyncio

    import nats

    options = spec["options"]
    password = Path(options["password_file"]).read_text().strip()

    async def main() -> float:
        nc = await nats.connect(options["url"], user=options["user"], password=password)
        js = nc.jetstream()
        queue = list(reversed(records))

        async def publisher() -> None:
            while queue:
                rec = queue.pop()
                body = json.dumps(rec.to_dict(), ensure_ascii=False).encode()
                await js.publish(
                    options["subject"],
                    body,
                    stream=options["stream"],
                    headers={"Nats-Msg-Id": rec.id},
                )

        started = time.perf_counter()
        await asyncio.gather(*(publisher() for _ in range(spec["parallel"])))
        seconds = time.perf_counter() - started
        await nc.close()
        return seconds

    return {"delivered": len(records), "work_seconds": asyncio.run(main())}


def _http_sender(
    url: str, fmt: str, parallel: int
) -> tuple[Callable[[SmsRecord], None], Callable[[], None]]:
    import httpx

    client = httpx.Client(limits=httpx.Limits(max_connections=parallel))
    key = base64.b64decode(SECRET.removeprefix("whsec_"))

    def send(rec: SmsRecord) -> None:
        if fmt == "agile":
            fields = [
                (name, getattr(rec, name))
                for name in ("originator", "destination", "date_time", "text")
            ]
            body = urlencode(fields).encode()
            headers = {
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Inbound-Mail-Id": rec.id,
            }
        else:
            body = json.dumps(rec.to_dict(), ensure_ascii=False).encode()
            stamp = str(int(time.time()))
            digest = hmac.new(key, f"{rec.id}.{stamp}.".encode() + body, hashlib.sha256).digest()
            headers = {
                "Content-Type": "application/json",
                "webhook-id": rec.id,
                "webhook-timestamp": stamp,
                "webhook-signature": "v1," + base64.b64encode(digest).decode(),
            }
        response = client.post(url, content=body, headers=headers)
        if response.status_code != 200 or (fmt == "agile" and b"+OK" not in response.content):
            raise RuntimeError(f"HTTP {response.status_code}")

    return send, client.close


def _jsonl_sender(path: str) -> tuple[Callable[[SmsRecord], None], Callable[[], None]]:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    lock = threading.Lock()
    written = [0]

    def send(rec: SmsRecord) -> None:
        line = (json.dumps(rec.to_dict(), ensure_ascii=False) + "\n").encode()
        with lock:
            os.write(fd, line)
            written[0] += 1
            if written[0] % 100 == 0:
                os.fsync(fd)

    def finish() -> None:
        os.fsync(fd)
        os.close(fd)

    return send, finish


def _command_sender(argv: list[str]) -> tuple[Callable[[SmsRecord], None], Callable[[], None]]:
    def send(rec: SmsRecord) -> None:
        line = json.dumps(rec.to_dict(), ensure_ascii=False).encode()
        subprocess.run(argv, input=line, capture_output=True, check=True)

    return send, lambda: None


def capacity(spec: dict[str, Any]) -> dict[str, Any]:
    url = urlsplit(spec["url"])
    body = urlencode(
        {
            "originator": "+393301234567",
            "destination": "+393331234333",
            "date_time": "20240501120000",
            "text": "capacity",
        }
    ).encode()
    per_thread = spec["count"] // spec["parallel"]

    def loop(_: int) -> None:
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
        for _i in range(per_thread):
            conn.request(
                "POST", url.path, body, {"Content-Type": "application/x-www-form-urlencoded"}
            )
            conn.getresponse().read()
        conn.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(spec["parallel"]) as pool:
        list(pool.map(loop, range(spec["parallel"])))
    return {
        "delivered": per_thread * spec["parallel"],
        "work_seconds": time.perf_counter() - started,
    }


# -- latency -------------------------------------------------------------------------------------


def latency(spec: dict[str, Any]) -> dict[str, Any]:
    from inbound_mail.delivery import DeliveryWorker

    db = Path(spec["db"])
    rng = random.Random(3)
    stop = threading.Event()
    delivery = DeliveryWorker(db, _config(spec))
    with Store.open(db) as store:
        thread = threading.Thread(target=delivery.run, args=(stop,), daemon=True)
        thread.start()
        sent: dict[str, float] = {}
        for index in range(spec["count"]):
            time.sleep(rng.uniform(0.02, 0.04))
            item = _item(index)
            store.ingest([item], route=lambda _r: [SINK])
            sent[item.outcome.id] = time.monotonic()  # type: ignore[union-attr]  # an SmsRecord
            delivery.wake()
        deadline = time.monotonic() + 30
        while delivery.totals.delivered < len(sent) and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        thread.join(10)
    delivery.close()
    return {"sent": sent}


def latency_bare(spec: dict[str, Any]) -> dict[str, Any]:
    import httpx

    rng = random.Random(3)
    sent: dict[str, float] = {}
    with httpx.Client() as client:
        for index in range(spec["count"]):
            time.sleep(rng.uniform(0.02, 0.04))
            rec = record(index)
            body = urlencode(
                {
                    "originator": rec.originator,
                    "destination": rec.destination,
                    "date_time": rec.date_time,
                    "text": rec.text,
                }
            ).encode()
            sent[rec.id] = time.monotonic()
            client.post(spec["options"]["url"], content=body, headers={"X-Inbound-Mail-Id": rec.id})
    return {"sent": sent}


MODES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "worker": worker,
    "bare": bare,
    "sink": sink_alone,
    "capacity": capacity,
    "latency": latency,
    "latency-bare": latency_bare,
}


if __name__ == "__main__":
    mode, spec_path = sys.argv[1], Path(sys.argv[2])
    child_report(MODES[mode](json.loads(spec_path.read_text())))
