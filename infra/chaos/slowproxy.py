#!/usr/bin/env python3
"""A TCP proxy on 127.0.0.1 that delays, cuts or withholds a backend's answers.

    slowproxy.py --listen 17379 --upstream 16379 --control 17380 [--delay 0]

Every chunk the upstream sends back is delivered `delay` seconds after it
arrived (order kept, nothing serialised: a real slow link, not a slow
server). It can also lose answers *after* the backend acted on the request,
the one fault a timeout on the client cannot tell from "never happened": the
request is forwarded whole, the backend answers (so, for DynamoDB, the write
has committed), and the proxy throws the answer away, either

  * cutting the connection (both sides reset at once: the client sees a
    dropped connection mid-request), or
  * withholding it (the client's connection stays open and silent until the
    client gives up and closes it: a timeout after the commit).

Control: one line to the control port, one answer line back:

  delay SECONDS        delay every answer (answers `ok SECONDS`)
  drop N               cut the connection on the next N answers
  drop-for SECONDS     cut the connection on every answer for that long
  drop-ratio P SECONDS cut the connection on each answer with probability P,
                       for that long (--seed makes the draw repeatable)
  hold-for SECONDS     withhold every answer for that long
  clear                no delay, nothing cut or withheld from now on
  stats                connections, bytes forwarded, answers cut and withheld

Runs until SIGTERM/SIGINT, or until --max-seconds has passed (a bound, so a
forgotten proxy cannot linger).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import time

HOST = "127.0.0.1"


class Proxy:
    def __init__(self, upstream: int, delay: float, seed: int | None = None):
        self.upstream = upstream
        self.delay = delay
        self.rng = random.Random(seed)
        self.connections = 0
        self.bytes_down = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.drop_next = 0  # answers still to cut (`drop N`)
        self.drop_until = 0.0  # monotonic; cut every answer until then
        self.ratio, self.ratio_until = 0.0, 0.0  # cut with probability `ratio` until then
        self.hold_until = 0.0  # monotonic; withhold every answer until then
        self.cut = 0
        self.held = 0

    def verdict(self) -> str:
        """What to do with an answer that just arrived: deliver, cut or hold."""
        now = time.monotonic()
        if self.drop_next > 0:
            self.drop_next -= 1
            return "cut"
        if now < self.drop_until:
            return "cut"
        if now < self.ratio_until and self.rng.random() < self.ratio:
            return "cut"
        if now < self.hold_until:
            return "hold"
        return "deliver"

    async def handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(cwriter)
        try:
            ureader, uwriter = await asyncio.open_connection(HOST, self.upstream)
        except OSError:
            cwriter.transport.abort()
            self.writers.discard(cwriter)
            return
        self.writers.add(uwriter)
        up = asyncio.create_task(self.pump(creader, uwriter, delayed=False))
        down = asyncio.create_task(self.pump(ureader, cwriter, delayed=True))
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        for t in (up, down):
            t.cancel()
        for w in (cwriter, uwriter):
            w.transport.abort()
            self.writers.discard(w)

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delayed: bool) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
                if delayed:
                    self.bytes_down += len(data)

        deliverer = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(65536)
                if delayed and data:
                    # Judged when the answer arrives, i.e. after the backend
                    # acted on the request: the loss is "after the commit".
                    verdict = self.verdict()
                    if verdict == "cut":
                        self.cut += 1
                        return  # handle() resets both connections
                    if verdict == "hold":
                        self.held += 1
                        # Nothing more reaches this client; its connection
                        # stays open until it gives up (the upstream side
                        # ending, or handle() cancelling us, ends it).
                        await asyncio.Event().wait()
                due = time.monotonic() + (self.delay if delayed else 0.0)
                queue.put_nowait((due, data))
                if not data:
                    break
            await deliverer
        except (ConnectionError, OSError):
            pass
        finally:
            deliverer.cancel()

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await asyncio.wait_for(reader.readline(), 5)).decode().split()
            now = time.monotonic()
            if len(line) == 2 and line[0] == "delay":
                self.delay = max(0.0, float(line[1]))
                writer.write(f"ok {self.delay}\n".encode())
            elif len(line) == 2 and line[0] == "drop":
                self.drop_next = max(0, int(line[1]))
                writer.write(f"ok {self.drop_next}\n".encode())
            elif len(line) == 2 and line[0] == "drop-for":
                self.drop_until = now + max(0.0, float(line[1]))
                writer.write(f"ok {line[1]}\n".encode())
            elif len(line) == 3 and line[0] == "drop-ratio":
                self.ratio = min(1.0, max(0.0, float(line[1])))
                self.ratio_until = now + max(0.0, float(line[2]))
                writer.write(f"ok {self.ratio} {line[2]}\n".encode())
            elif len(line) == 2 and line[0] == "hold-for":
                self.hold_until = now + max(0.0, float(line[1]))
                writer.write(f"ok {line[1]}\n".encode())
            elif line == ["clear"]:
                self.delay, self.drop_next, self.drop_until, self.hold_until = 0.0, 0, 0.0, 0.0
                self.ratio, self.ratio_until = 0.0, 0.0
                writer.write(b"ok\n")
            elif line and line[0] == "stats":
                writer.write(f"connections {self.connections} bytes_down {self.bytes_down} delay {self.delay} "
                             f"cut {self.cut} held {self.held}\n".encode())
            else:
                writer.write(b"error: expected delay SECONDS | drop N | drop-for SECONDS | drop-ratio P SECONDS"
                             b" | hold-for SECONDS | clear | stats\n")
            await writer.drain()
        except (asyncio.TimeoutError, ValueError, OSError):
            pass
        finally:
            writer.close()


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", type=int, required=True)
    p.add_argument("--upstream", type=int, required=True)
    p.add_argument("--control", type=int, required=True)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--max-seconds", type=float, default=600.0)
    p.add_argument("--seed", type=int, help="seed for drop-ratio (default: random)")
    args = p.parse_args()
    proxy = Proxy(args.upstream, args.delay, args.seed)
    server = await asyncio.start_server(proxy.handle, HOST, args.listen)
    control = await asyncio.start_server(proxy.control, HOST, args.control)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"slowproxy: 127.0.0.1:{args.listen} -> 127.0.0.1:{args.upstream}, control :{args.control}", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), args.max_seconds)
    except asyncio.TimeoutError:
        print("slowproxy: --max-seconds reached, stopping", flush=True)
    server.close()
    control.close()
    for w in list(proxy.writers):
        w.transport.abort()


if __name__ == "__main__":
    asyncio.run(main())
