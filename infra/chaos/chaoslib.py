"""Shared pieces of the chaos and abuse checks (stdlib + `cryptography`).

* `Stack`: where the chaos stack lives (ports, STACK_DIR, pid files) and how
  to kill / restart its processes the way infra/local/stack.sh starts them;
* `mint_token`: EdDSA access tokens signed with the stack's own key, so a
  stampede of thousands of buyers needs no thousands of argon2 logins;
* `AsyncClient`: a tiny keep-alive HTTP/1.1 client on asyncio streams, with a
  per-request deadline, that records every answer (or failure) it saw;
* `call`: one synchronous request (http.client) for admin calls and audits.

Everything talks to 127.0.0.1 only. Defaults are the chaos stack's ports
(never the default 8080-8083 / 6379 / 8000 stack).
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import random
import signal
import socket
import string
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"

# --------------------------------------------------------------------- stack


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


@dataclass
class Stack:
    """The chaos stack, as infra/chaos/chaos.sh brings it up."""

    stack_dir: Path = field(default_factory=lambda: Path(os.environ.get("STACK_DIR") or ROOT / ".local/chaos"))
    router_port: int = field(default_factory=lambda: _env_int("ROUTER_PORT", 18080))
    auth_port: int = field(default_factory=lambda: _env_int("AUTH_PORT", 18081))
    stock_port: int = field(default_factory=lambda: _env_int("STOCK_PORT", 18082))
    order_port: int = field(default_factory=lambda: _env_int("ORDER_PORT", 18083))
    metrics_base: int = field(default_factory=lambda: _env_int("METRICS_PORT_BASE", 19180))
    redis_port: int = field(default_factory=lambda: _env_int("REDIS_PORT", 16379))
    dynamodb_port: int = field(default_factory=lambda: _env_int("DYNAMODB_PORT", 18000))
    admin_token: str = field(default_factory=lambda: os.environ.get("ADMIN_TOKEN") or "dev-admin-token")

    def __post_init__(self) -> None:
        shared = {8080, 8081, 8082, 8083, 9181, 9182, 9183, 6379, 8000}
        mine = {self.router_port, self.auth_port, self.stock_port, self.order_port,
                self.redis_port, self.dynamodb_port}
        if mine & shared:
            raise SystemExit(f"refusing to run chaos on the shared default ports {sorted(mine & shared)}")

    @property
    def pids(self) -> Path:
        return self.stack_dir / "pids"

    @property
    def logs(self) -> Path:
        return self.stack_dir / "logs"

    def pid(self, name: str) -> int | None:
        try:
            pid = int((self.pids / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def secrets(self) -> dict[str, str]:
        out = {}
        for line in (self.stack_dir / "secrets.env").read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                k, v = line.split("=", 1)
                out[k.strip()] = v.strip().strip("'\"")
        return out

    def stack_env(self) -> dict[str, str]:
        """The environment infra/local/stack.sh needs to address this stack."""
        env = dict(os.environ)
        env.update(
            STACK_DIR=str(self.stack_dir), ROUTER_PORT=str(self.router_port),
            AUTH_PORT=str(self.auth_port), STOCK_PORT=str(self.stock_port),
            ORDER_PORT=str(self.order_port), METRICS_PORT_BASE=str(self.metrics_base),
            REDIS_PORT=str(self.redis_port), DYNAMODB_PORT=str(self.dynamodb_port),
        )
        return env

    def stack_sh(self, *args: str, timeout: float = 120) -> None:
        """Runs infra/local/stack.sh with this stack's environment."""
        log = open(self.logs / "chaos-stack-sh.log", "ab")
        try:
            subprocess.run([str(ROOT / "infra/local/stack.sh"), *args], env=self.stack_env(),
                           stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=True)
        finally:
            log.close()

    def process_env(self, name: str) -> dict[str, str]:
        """The exact environment a running stack process was started with."""
        pid = self.pid(name)
        if pid is None:
            raise RuntimeError(f"{name} is not running")
        raw = Path(f"/proc/{pid}/environ").read_bytes()
        return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)

    def binary(self, name: str, env: dict[str, str] | None = None) -> str:
        pid = self.pid(name)
        if pid is not None:
            exe = os.readlink(f"/proc/{pid}/exe")
            return exe.removesuffix(" (deleted)")
        profile = (env or os.environ).get("PROFILE", "dev")
        return str(ROOT / "target" / ("debug" if profile == "dev" else profile) / name)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own child that died) is not alive.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def kill_and_wait(pid: int, sig: int = signal.SIGKILL, timeout: float = 15.0) -> bool:
    """Sends `sig` to one process (by id) and waits (bounded) for it to exit."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        except ChildProcessError:
            pass
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    return False


def port_open(port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(pred, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return True
        except Exception:  # noqa: BLE001 - a probe that fails is a "not yet"
            pass
        time.sleep(interval)
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------- tokens


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def fake_user_id(rng: random.Random | None = None) -> str:
    """A ULID-shaped user id (26 Crockford base32 characters)."""
    rng = rng or random
    return "".join(rng.choice(_CROCKFORD) for _ in range(26))


class Minter:
    """Signs access tokens exactly as the auth function does (EdDSA JWT)."""

    def __init__(self, seed_b64: str, issuer: str = "flashsale-auth", audience: str = "flashsale"):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self.key = Ed25519PrivateKey.from_private_bytes(b64url_decode(seed_b64.strip()))
        self.public_raw = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.issuer, self.audience = issuer, audience

    def token(self, sub: str, *, ttl: int = 900, header: dict | None = None, **overrides) -> str:
        now = int(time.time())
        claims = {"sub": sub, "iss": self.issuer, "aud": self.audience, "iat": now,
                  "exp": now + ttl, "nbf": now}
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return self.sign(claims, header)

    def sign(self, claims: dict, header: dict | None = None) -> str:
        header = header or {"alg": "EdDSA", "typ": "JWT"}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        return f"{signing_input}.{b64url(self.key.sign(signing_input.encode()))}"


# --------------------------------------------------------------------- sync HTTP


class _JsonBody:
    """The JSON body of an answer and its contract error code, if any."""

    body: bytes

    def json(self):
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None

    @property
    def code(self) -> str | None:
        j = self.json()
        if isinstance(j, dict) and isinstance(j.get("error"), dict):
            return j["error"].get("code")
        return None


@dataclass
class Reply(_JsonBody):
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float



def call(port: int, method: str, path: str, body=None, *, token: str | None = None,
         headers: dict | None = None, timeout: float = 15.0, raw: bytes | None = None) -> Reply:
    """One request on a fresh connection; never raises for an HTTP status."""
    h = {"connection": "close"}
    if token:
        h["authorization"] = f"Bearer {token}"
    data = raw
    if body is not None and raw is None:
        data = json.dumps(body).encode()
        h["content-type"] = "application/json"
    h.update(headers or {})
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request(method, path, body=data, headers=h)
        resp = conn.getresponse()
        payload = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload,
                     time.monotonic() - started)
    finally:
        conn.close()


def admin(stack: Stack, method: str, path: str, body=None, timeout: float = 15.0) -> Reply:
    return call(stack.stock_port, method, path, body, token=stack.admin_token, timeout=timeout)


def create_sale(stack: Stack, sale_id: str, stock: int, per_user_limit: int = 1, **extra) -> dict:
    r = admin(stack, "POST", "/stock/sales",
              {"sale_id": sale_id, "name": f"chaos {sale_id}", "stock": stock,
               "per_user_limit": per_user_limit, **extra})
    if r.status != 201:
        raise RuntimeError(f"creating sale {sale_id}: {r.status} {r.body[:300]!r}")
    return r.json()


def unique(prefix: str) -> str:
    tail = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(6))
    return f"{prefix}-{int(time.time()) % 100000}-{tail}"


# --------------------------------------------------------------------- async HTTP


@dataclass
class Result(_JsonBody):
    """One request as the client saw it."""

    status: int | None  # None: no HTTP answer (see error)
    error: str | None  # refused / reset / eof / timeout / ...
    started: float  # monotonic, when the request was handed to the socket
    sent: float  # monotonic, when its bytes were written
    finished: float
    reused: bool  # sent on a connection that had already been answered on
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    tag: str = ""

    @property
    def latency(self) -> float:
        return self.finished - self.started



class _Conn:
    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.answered = 0

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.transport.abort()
            except Exception:  # noqa: BLE001
                pass
        self.reader = self.writer = None
        self.answered = 0


class AsyncClient:
    """A pool of keep-alive connections to one port; every call is recorded."""

    def __init__(self, port: int, connections: int, timeout: float):
        self.port = port
        self.timeout = timeout
        self.results: list[Result] = []
        self._pool: asyncio.Queue[_Conn] = asyncio.Queue()
        for _ in range(connections):
            self._pool.put_nowait(_Conn(port))

    async def close(self) -> None:
        while not self._pool.empty():
            self._pool.get_nowait().close()

    async def request(self, method: str, path: str, body=None, headers: dict | None = None,
                      tag: str = "") -> Result:
        conn = await self._pool.get()
        try:
            return await self._request(conn, method, path, body, headers or {}, tag)
        finally:
            self._pool.put_nowait(conn)

    async def _request(self, conn: _Conn, method, path, body, headers, tag) -> Result:
        data = json.dumps(body).encode() if body is not None else b""
        lines = [f"{method} {path} HTTP/1.1", f"host: {HOST}:{conn.port}"]
        if body is not None:
            lines += ["content-type: application/json", f"content-length: {len(data)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        wire = ("\r\n".join(lines) + "\r\n\r\n").encode() + data
        started = time.monotonic()
        sent = started
        reused = conn.answered > 0
        try:
            async with asyncio.timeout(self.timeout):
                if conn.writer is None:
                    conn.reader, conn.writer = await asyncio.open_connection(HOST, conn.port)
                conn.writer.write(wire)
                await conn.writer.drain()
                sent = time.monotonic()
                status, rheaders, rbody = await _read_response(conn.reader)
        except TimeoutError:
            conn.close()
            return self._record(Result(None, "timeout", started, sent, time.monotonic(), reused, tag=tag))
        except ConnectionRefusedError:
            conn.close()
            return self._record(Result(None, "refused", started, sent, time.monotonic(), reused, tag=tag))
        except (ConnectionResetError, BrokenPipeError):
            conn.close()
            return self._record(Result(None, "reset", started, sent, time.monotonic(), reused, tag=tag))
        except asyncio.IncompleteReadError:
            conn.close()
            return self._record(Result(None, "eof", started, sent, time.monotonic(), reused, tag=tag))
        except OSError as e:
            conn.close()
            return self._record(Result(None, f"oserror:{e.errno}", started, sent, time.monotonic(), reused, tag=tag))
        except ValueError as e:  # a response we could not parse
            conn.close()
            return self._record(Result(None, f"garbled:{e}", started, sent, time.monotonic(), reused, tag=tag))
        conn.answered += 1
        if rheaders.get("connection", "").lower() == "close":
            conn.close()
        return self._record(Result(status, None, started, sent, time.monotonic(), reused, rheaders, rbody, tag))

    def _record(self, r: Result) -> Result:
        self.results.append(r)
        return r


async def _read_response(reader: asyncio.StreamReader):
    line = await reader.readline()
    if not line:
        raise asyncio.IncompleteReadError(b"", None)
    parts = line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ValueError(f"bad status line {line[:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        h = await reader.readline()
        if not h:
            raise asyncio.IncompleteReadError(b"", None)
        if h in (b"\r\n", b"\n"):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                break
            chunks.append(await reader.readexactly(size))
            await reader.readline()
        body = b"".join(chunks)
    else:
        body = b""
    return status, headers, body


# --------------------------------------------------------------------- output


def table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "+".join("-" * (w + 2) for w in widths)
    out = []
    if title:
        out.append(title)
    out.append(" | ".join(h.ljust(w) for h, w in zip(headers, widths)))
    out.append(line)
    for r in cells:
        out.append(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
    return "\n".join(out)
