"""An open-loop overload client: what a crowd of impatient clients gets from the server.

Requests are due at a fixed rate whatever the server does, each on a new connection, and
each client gives up ``--client-timeout`` seconds after its request was due. Meanwhile a
prober asks ``/healthz`` (on ``--probe-port``) every ``--probe-interval`` seconds. When
the load stops, a lone request (asked again until answered) measures how long the server
takes to answer again. Prints one JSON line: answers by outcome (``ok``: 200 in time,
``shed``: 429/503 in time, ``late``: no answer in time, ``error``: the connection failed,
as it does when the kernel's queue of connections is full), goodput (ok per second), the
probe's latencies and the lone request's latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import threading
import time
from collections import Counter

import uvloop
from loadgen import read_response


async def exchange(port: int, request: bytes) -> int:
    """The status of the answer to ``request`` sent on a new connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        head = await read_response(reader)
        return int(head.split(b" ", 2)[1])
    finally:
        writer.close()


def post(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: overload\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def overload(
    port: int,
    request: bytes,
    rate: float,
    seconds: float,
    client_timeout: float,
    probe: float,
    probe_port: int,
) -> dict:
    outcomes: Counter[str] = Counter()
    probes: list[float] = []
    start = time.perf_counter()
    stop_at = start + seconds

    async def client(due: float) -> None:
        try:
            remaining = due + client_timeout - time.perf_counter()
            status = await asyncio.wait_for(exchange(port, request), max(remaining, 0.001))
        except TimeoutError:
            outcomes["late"] += 1
        except (OSError, EOFError, ValueError):  # refused, reset, or cut short
            outcomes["error"] += 1
        else:
            outcomes[
                "ok" if status == 200 else "shed" if status in (429, 503) else f"status_{status}"
            ] += 1

    def prober() -> None:
        """A thread with blocking sockets: the probe's latency is the server's, not this
        process's busy event loop's."""
        health = b"GET /healthz HTTP/1.1\r\nHost: overload\r\nConnection: close\r\n\r\n"
        while time.perf_counter() < stop_at:
            sent = time.perf_counter()
            try:
                with socket.create_connection(("127.0.0.1", probe_port), timeout=10) as sock:
                    sock.sendall(health)
                    while sock.recv(65536):  # the server closes after its answer
                        pass
                probes.append(time.perf_counter() - sent)
            except OSError:
                probes.append(10.0)
            time.sleep(probe)

    probing = threading.Thread(target=prober, daemon=True)
    probing.start()
    clients = []
    index = 0
    while (due := start + index / rate) < stop_at:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        clients.append(asyncio.create_task(client(due)))
        index += 1
    sent = time.perf_counter()
    lone = None
    while lone is None and time.perf_counter() - sent < 30:
        try:
            if await asyncio.wait_for(exchange(port, request), 30) == 200:
                lone = time.perf_counter() - sent
        except (TimeoutError, OSError, EOFError, ValueError):  # refused while the queue drains
            await asyncio.sleep(0.05)
    await asyncio.gather(*clients)
    probing.join()
    probes.sort()
    return {
        "offered": index,
        "rate": rate,
        "seconds": seconds,
        **{k: outcomes[k] for k in ("ok", "shed", "late", "error")},
        "other": {k: v for k, v in outcomes.items() if k not in ("ok", "shed", "late", "error")},
        "goodput": outcomes["ok"] / seconds,
        "probes": len(probes),
        "probe_p50_ms": 1000 * probes[len(probes) // 2] if probes else None,
        "probe_max_ms": 1000 * probes[-1] if probes else None,
        "probes_over_200ms": sum(p > 0.2 for p in probes),
        "lone_after_load_ms": None if lone is None else 1000 * lone,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/v1/score")
    parser.add_argument("--body", required=True, help="file holding one request body (JSON)")
    parser.add_argument("--rate", type=float, required=True, help="requests/s")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--client-timeout", type=float, default=2)
    parser.add_argument("--probe-interval", type=float, default=0.1)
    parser.add_argument("--probe-port", type=int, help="the probes' port (default --port)")
    args = parser.parse_args()
    with open(args.body, "rb") as source:
        request = post(args.path, source.read())
    # uvloop: opening a connection costs this process half the CPU, so it can offer the
    # rates it is asked for (8x a fast server's capacity is thousands of connections/s)
    result = uvloop.run(
        overload(
            args.port,
            request,
            args.rate,
            args.seconds,
            args.client_timeout,
            args.probe_interval,
            args.probe_port or args.port,
        )
    )
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
