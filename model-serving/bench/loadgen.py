"""A light HTTP/1.1 load generator: raw keep-alive connections on asyncio (uvloop).

Runs as its own process (pinned to its own core by bench_serving.py), prints one JSON
line. Two modes:

- ``closed``: N connections, each sends its next request as soon as the previous answer
  arrives: the server's capacity (requests/s) and latencies at saturation.
- ``open``: requests are due at a fixed rate whatever the server does; latency counts from
  the moment a request was due (no coordinated omission), so a server that falls behind
  shows it in the percentiles. How late this process itself started each request is
  reported apart (``lag_*``): on a busy machine the generator waits for a core too, and
  that wait is in the latencies; ``started_*`` are the latencies from the moment it did
  start each request (its own lateness left out, a wait for a free connection kept in).

Every answer must be ``200`` with a Content-Length body; anything else counts as an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

import uvloop


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """The head of the next HTTP/1.1 answer on ``reader``, its Content-Length body read."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return head


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def exchange(self, request: bytes) -> bool:
        self.writer.write(request)
        head = await read_response(self.reader)
        return head.startswith(b"HTTP/1.1 200")


def build_requests(path: str, bodies: list[str]) -> list[bytes]:
    return [
        (
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body.encode())}\r\n\r\n"
        ).encode()
        + body.encode()
        for body in bodies
    ]


async def closed_loop(host, port, requests, connections, warmup, seconds):
    latencies: list[float] = []
    errors = 0
    exchanges = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def worker():
        nonlocal errors, exchanges
        connection = await Connection.open(host, port)
        while (now := time.perf_counter()) < stop_at:
            ok = await connection.exchange(random.choice(requests))
            done = time.perf_counter()
            exchanges += 1
            if now >= measure_from:
                latencies.append(done - now)
                errors += not ok
        connection.writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return latencies, errors, seconds, [], exchanges, []


async def open_loop(host, port, requests, connections, warmup, seconds, rate):
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await Connection.open(host, port))
    latencies: list[float] = []
    lags: list[float] = []
    started_latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup
    total = int((warmup + seconds) * rate)
    interval = 1.0 / rate

    async def one(due: float):
        nonlocal errors
        started = time.perf_counter()
        connection = await pool.get()
        ok = await connection.exchange(random.choice(requests))
        pool.put_nowait(connection)
        if due >= measure_from:
            answered = time.perf_counter()
            latencies.append(answered - due)
            started_latencies.append(answered - started)
            lags.append(started - due)
            errors += not ok

    tasks = []
    for index in range(total):
        due = start + index * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    return latencies, errors, seconds, lags, len(tasks), started_latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--bodies", required=True, help="JSON file: a list of request bodies")
    parser.add_argument("--mode", choices=("closed", "open"), default="closed")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--rate", type=float, default=0, help="requests/s (open mode)")
    args = parser.parse_args()
    with open(args.bodies) as source:
        requests = build_requests(args.path, json.load(source))
    if args.mode == "closed":
        run = closed_loop(
            "127.0.0.1", args.port, requests, args.connections, args.warmup, args.seconds
        )
    else:
        run = open_loop(
            "127.0.0.1", args.port, requests, args.connections, args.warmup, args.seconds, args.rate
        )
    latencies, errors, seconds, lags, exchanges, started = uvloop.run(run)
    for values in (latencies, lags, started):
        values.sort()

    def quantile(q: float, values: list[float] = latencies) -> float | None:
        if not values:
            return None
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    json.dump(
        {
            "requests": len(latencies),
            "exchanges": exchanges,  # warm-up included: what the server answered in all
            "errors": errors,
            "rps": len(latencies) / seconds,
            "p50_ms": quantile(0.50),
            "p99_ms": quantile(0.99),
            "p999_ms": quantile(0.999),
            "lag_p99_ms": quantile(0.99, lags),
            "lag_p999_ms": quantile(0.999, lags),
            "started_p99_ms": quantile(0.99, started),
            "started_p999_ms": quantile(0.999, started),
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
