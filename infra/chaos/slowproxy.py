#!/usr/bin/env python3
"""A TCP proxy on 127.0.0.1 that adds latency to a backend's answers.

    slowproxy.py --listen 17379 --upstream 16379 --control 17380 [--delay 0]

Every chunk the upstream sends back is delivered `delay` seconds after it
arrived (order kept, nothing serialised: a real slow link, not a slow
server). The delay can be changed while running by sending one line to the
control port: `delay 3.0` (answers `ok 3.0`), or `stats` (answers the number
of connections and bytes forwarded). Runs until SIGTERM/SIGINT, or until
--max-seconds has passed (a bound, so a forgotten proxy cannot linger).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

HOST = "127.0.0.1"


class Proxy:
    def __init__(self, upstream: int, delay: float):
        self.upstream = upstream
        self.delay = delay
        self.connections = 0
        self.bytes_down = 0
        self.writers: set[asyncio.StreamWriter] = set()

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
            if len(line) == 2 and line[0] == "delay":
                self.delay = max(0.0, float(line[1]))
                writer.write(f"ok {self.delay}\n".encode())
            elif line and line[0] == "stats":
                writer.write(f"connections {self.connections} bytes_down {self.bytes_down} delay {self.delay}\n".encode())
            else:
                writer.write(b"error: expected 'delay SECONDS' or 'stats'\n")
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
    args = p.parse_args()
    proxy = Proxy(args.upstream, args.delay)
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
