#!/usr/bin/env python3
"""Abuse checks against the chaos stack (infra/chaos/chaos.sh brings it up).

    abuse.py [--quick] [--samples N]

  tokens        alg none, HS256 signed with the public key, a foreign key,
                expired, not yet valid, wrong aud / iss, tampered payload,
                oversized (10 KB), garbage -> 401 on POST /orders and GET /orders
  enumeration   login as an unknown user vs a wrong password: same status, same
                body, medians within 10% (N alternating samples each)
  throttling    repeated failures lock the account: 429 + Retry-After, also
                for the right password while locked, and the same for an
                unknown name (no enumeration through the lock either)
  rate limits   one user firing 200 checkouts back to back: 429 rate_limited
                with Retry-After once the per-user budget (default 100 per
                10 s) is spent, and still exactly one order
  ownership     a user cannot read another's order (404) nor see it listed
  admin         an access token, no token or a wrong token cannot reach any
                admin call (401)
  input         bodies over 16 KiB (413, with and without Content-Length),
                wrong content types (415), huge / negative / fractional
                numbers, bad ids, unicode usernames, bad Idempotency-Keys,
                deep JSON -> a clear 4xx in the contract's error shape, and
                nothing stored (checked with the admin breakdown, the orders
                lists, GET of the sale and a login attempt)

Every answer must carry x-request-id and, for errors, {"error":{"code","message"}}.
Prints a table; exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chaoslib as cl  # noqa: E402

ROWS: list[list] = []
FAILED: list[str] = []


def check(group: str, what: str, ok: bool, expected: str, got: str) -> bool:
    ROWS.append([group, what, expected, got[:70], "PASS" if ok else "FAIL"])
    if not ok:
        FAILED.append(f"{group}: {what}: expected {expected}, got {got}")
    return ok


def shape_ok(r: cl.Reply) -> bool:
    """x-request-id always; the contract's error body on every error."""
    if "x-request-id" not in r.headers:
        return False
    if r.status >= 400:
        j = r.json()
        return (isinstance(j, dict) and isinstance(j.get("error"), dict)
                and isinstance(j["error"].get("code"), str) and isinstance(j["error"].get("message"), str))
    return True


def expect(group: str, what: str, r: cl.Reply, status: int, code: str | None = None) -> bool:
    ok = r.status == status and (code is None or r.code == code) and shape_ok(r)
    if status in (429, 503):
        ok = ok and r.headers.get("retry-after", "").isdigit()
    got = f"{r.status} {r.code or ''}" + ("" if shape_ok(r) else " (bad error shape / no x-request-id)")
    return check(group, what, ok, f"{status} {code or ''}".strip(), got)


def raw_request(port: int, wire: bytes, timeout: float = 10) -> tuple[int, bytes]:
    """Sends bytes as they are; returns (status, whole response)."""
    with socket.create_connection((cl.HOST, port), timeout=timeout) as s:
        s.sendall(wire)
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if b"\r\n\r\n" in data and (b"content-length: " in data.lower()):
                    head, _, body = data.partition(b"\r\n\r\n")
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:") and len(body) >= int(line.split(b":")[1]):
                            return int(data.split(b" ")[1]), data
        except (ConnectionResetError, socket.timeout):
            pass
    return (int(data.split(b" ")[1]) if data.startswith(b"HTTP/") else 0), data


# ---------------------------------------------------------------- setup


def register_login(stack: cl.Stack, username: str, password: str) -> tuple[str, str]:
    r = cl.call(stack.auth_port, "POST", "/auth/register", {"username": username, "password": password})
    if r.status != 201:
        raise RuntimeError(f"register {username}: {r.status} {r.body[:200]!r}")
    user_id = r.json()["user_id"]
    r = cl.call(stack.auth_port, "POST", "/auth/login", {"username": username, "password": password})
    if r.status != 200:
        raise RuntimeError(f"login {username}: {r.status} {r.body[:200]!r}")
    return user_id, r.json()["access_token"]


# ---------------------------------------------------------------- checks


def tokens(stack: cl.Stack, minter: cl.Minter, a_id: str, a_token: str, b_id: str) -> None:
    g = "token"
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    now = int(time.time())
    claims = {"sub": a_id, "iss": "flashsale-auth", "aud": "flashsale", "iat": now, "exp": now + 600, "nbf": now}
    pub_text = cl.b64url(minter.public_raw)

    def unsigned(header: dict, body: dict) -> str:
        return f"{cl.b64url(json.dumps(header).encode())}.{cl.b64url(json.dumps(body).encode())}"

    def hs256(secret: bytes) -> str:
        si = unsigned({"alg": "HS256", "typ": "JWT"}, claims)
        return f"{si}.{cl.b64url(hmac.new(secret, si.encode(), hashlib.sha256).digest())}"

    head, payload, sig = a_token.split(".")
    tampered_claims = json.loads(cl.b64url_decode(payload))
    tampered_claims["sub"] = b_id
    foreign = Ed25519PrivateKey.generate()
    foreign_si = unsigned({"alg": "EdDSA", "typ": "JWT"}, claims)
    big = minter.sign({**claims, "pad": "x" * 10_000})
    cases = {
        "no Authorization header": None,
        "alg none, empty signature": unsigned({"alg": "none", "typ": "JWT"}, claims) + ".",
        "alg none, no signature part": unsigned({"alg": "none", "typ": "JWT"}, claims),
        "HS256 keyed with the public key (text)": hs256(pub_text.encode()),
        "HS256 keyed with the public key (raw)": hs256(minter.public_raw),
        "EdDSA signed by a foreign key": f"{foreign_si}.{cl.b64url(foreign.sign(foreign_si.encode()))}",
        "expired (exp 10 min ago)": minter.sign({**claims, "iat": now - 1200, "exp": now - 600, "nbf": now - 1200}),
        "not yet valid (nbf in 1 h)": minter.sign({**claims, "nbf": now + 3600, "iat": now + 3600}),
        "wrong aud": minter.sign({**claims, "aud": "someone-else"}),
        "wrong iss": minter.sign({**claims, "iss": "evil-auth"}),
        "aud as a list": minter.sign({**claims, "aud": ["flashsale", "x"]}),
        "tampered payload (sub = other user)": f"{head}.{cl.b64url(json.dumps(tampered_claims).encode())}.{sig}",
        "signature of another token": f"{head}.{payload}.{cl.b64url(b'0' * 64)}",
        f"oversized ({len(big) // 1024} KB, validly signed)": big,
        "empty sub": minter.sign({**claims, "sub": ""}),
        "garbage": "not.a.jwt",
        "the admin token as a bearer": stack.admin_token,
    }
    for what, tok in cases.items():
        for method, path, body in (("POST", "/orders", {"sale_id": "nope"}), ("GET", "/orders", None)):
            r = cl.call(stack.order_port, method, path, body, token=tok)
            expect(g, f"{method} {path}: {what}", r, 401, "unauthorized")
    # The scheme must be Bearer; the real token in another scheme is refused.
    r = cl.call(stack.order_port, "GET", "/orders", headers={"authorization": f"Basic {a_token}"})
    expect(g, "GET /orders: valid token, Basic scheme", r, 401, "unauthorized")
    r = cl.call(stack.order_port, "GET", "/orders", token=a_token)
    expect(g, "control: GET /orders with the real token", r, 200)


def enumeration(stack: cl.Stack, samples: int, tag: str) -> tuple[float, float]:
    """Medians of both kinds of failed login. The machine may be shared and
    noisy, so a round over 10% is measured once more with fresh accounts: a
    real difference (a leak) shows in both rounds in the same direction;
    noise does not. Fails if both rounds exceed 10% the same way."""
    g = "enumeration"
    r1 = _enumeration_round(stack, samples, f"{tag}a")
    rounds = [r1]
    if r1[2] > 0.10:
        rounds.append(_enumeration_round(stack, samples, f"{tag}b"))
    leak = all(r[2] > 0.10 for r in rounds) and len({r[0] > r[1] for r in rounds}) == 1
    got = "; ".join(f"unknown {u * 1000:.1f} ms, wrong password {w * 1000:.1f} ms ({d:.1%})" for u, w, d in rounds)
    check(g, f"median time, {samples} alternating samples each", not leak, "within 10%", got)
    return rounds[-1][0], rounds[-1][1]


def _enumeration_round(stack: cl.Stack, samples: int, tag: str) -> tuple[float, float, float]:
    g = "enumeration"
    # Each account takes at most 4 wrong passwords (the lock is at 5), so the
    # samples are spread over several real and several unknown accounts.
    per = 4
    n_users = (samples + per - 1) // per
    known = [f"enum-{tag}-{i}" for i in range(n_users)]
    for u in known:
        r = cl.call(stack.auth_port, "POST", "/auth/register", {"username": u, "password": "the right password 1"})
        if r.status != 201:
            raise RuntimeError(f"register {u}: {r.status}")
    unknown = [f"ghost-{tag}-{i}" for i in range(n_users)]
    import http.client

    conn = http.client.HTTPConnection(cl.HOST, stack.auth_port, timeout=20)
    times = {"unknown": [], "wrong": []}
    bodies = {"unknown": set(), "wrong": set()}
    statuses = {"unknown": set(), "wrong": set()}
    headers_seen = {"unknown": set(), "wrong": set()}

    def login(username: str, kind: str) -> None:
        body = json.dumps({"username": username, "password": "a wrong password!"})
        t = time.perf_counter()
        conn.request("POST", "/auth/login", body=body, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        times[kind].append(time.perf_counter() - t)
        statuses[kind].add(resp.status)
        bodies[kind].add(data)
        headers_seen[kind].add(tuple(sorted(k.lower() for k, _ in resp.getheaders())))

    # warm up both paths once (not counted)
    login(f"warm-{tag}", "unknown")
    times["unknown"].clear()
    for i in range(samples):
        u = i // per
        if i % 2 == 0:
            login(known[u], "wrong")
            login(unknown[u], "unknown")
        else:
            login(unknown[u], "unknown")
            login(known[u], "wrong")
    conn.close()
    m_unknown = statistics.median(times["unknown"])
    m_wrong = statistics.median(times["wrong"])
    check(g, "same status", statuses["unknown"] == statuses["wrong"] == {401}, "401 both",
          f"unknown {sorted(statuses['unknown'])}, wrong {sorted(statuses['wrong'])}")
    check(g, "same body", bodies["unknown"] == bodies["wrong"] and len(bodies["wrong"]) == 1,
          "identical bytes", f"{len(bodies['unknown'] | bodies['wrong'])} distinct bodies")
    check(g, "same header names", headers_seen["unknown"] == headers_seen["wrong"], "identical",
          f"{len(headers_seen['unknown'] | headers_seen['wrong'])} distinct sets")
    diff = abs(m_unknown - m_wrong) / max(m_unknown, m_wrong)
    MEDIANS.append((m_unknown, m_wrong, diff))
    return m_unknown, m_wrong, diff


def throttling(stack: cl.Stack, tag: str) -> None:
    g = "throttle"
    user, pw = f"lock-{tag}", "the right password 1"
    cl.call(stack.auth_port, "POST", "/auth/register", {"username": user, "password": pw})
    codes = []
    for _ in range(5):
        codes.append(cl.call(stack.auth_port, "POST", "/auth/login", {"username": user, "password": "wrong password 1"}).status)
    check(g, "5 wrong passwords", codes == [401] * 5, "401 x5", str(codes))
    r = cl.call(stack.auth_port, "POST", "/auth/login", {"username": user, "password": "wrong password 1"})
    expect(g, "6th wrong password", r, 429, "too_many_attempts")
    r = cl.call(stack.auth_port, "POST", "/auth/login", {"username": user, "password": pw})
    expect(g, "right password while locked", r, 429, "too_many_attempts")
    r = cl.call(stack.auth_port, "POST", "/auth/login", {"username": user.upper(), "password": pw})
    expect(g, "same account in upper case while locked", r, 429, "too_many_attempts")
    ghost = f"lockghost-{tag}"
    for _ in range(5):
        cl.call(stack.auth_port, "POST", "/auth/login", {"username": ghost, "password": "wrong password 1"})
    r2 = cl.call(stack.auth_port, "POST", "/auth/login", {"username": ghost, "password": "wrong password 1"})
    expect(g, "unknown name locks the same way", r2, 429, "too_many_attempts")
    check(g, "locked known vs unknown: same body", r.body == r2.body or _same_but_seconds(r.body, r2.body),
          "identical (but the seconds)", f"{r.body[:60]!r} / {r2.body[:60]!r}")
    # Another account is not affected by this one's lock.
    other = f"free-{tag}"
    cl.call(stack.auth_port, "POST", "/auth/register", {"username": other, "password": pw})
    r = cl.call(stack.auth_port, "POST", "/auth/login", {"username": other, "password": pw})
    expect(g, "other account still logs in", r, 200)


def _same_but_seconds(a: bytes, b: bytes) -> bool:
    import re
    return re.sub(rb"\d+", b"N", a) == re.sub(rb"\d+", b"N", b)


def ownership(stack: cl.Stack, a_token: str, b_token: str, a_id: str, b_id: str, tag: str) -> None:
    g = "ownership"
    sale = f"own-{tag}"
    cl.create_sale(stack, sale, 10, 2)
    r = cl.call(stack.order_port, "POST", "/orders", {"sale_id": sale}, token=a_token)
    if not expect(g, "A buys one", r, 201):
        return
    order_id = r.json()["order_id"]
    r = cl.call(stack.order_port, "GET", f"/orders/{order_id}", token=a_token)
    expect(g, "A reads A's order", r, 200)
    r = cl.call(stack.order_port, "GET", f"/orders/{order_id}", token=b_token)
    expect(g, "B reads A's order", r, 404, "order_not_found")
    for path in (f"/orders?sale_id={sale}", "/orders"):
        r = cl.call(stack.order_port, "GET", path, token=b_token)
        ids = [o["order_id"] for o in (r.json() or {}).get("orders", [])]
        check(g, f"B lists {path}", r.status == 200 and order_id not in ids
              and all(o["user_id"] == b_id for o in r.json()["orders"]), "200 without A's order", f"{r.status} {ids[:3]}")
        r = cl.call(stack.order_port, "GET", path, token=a_token)
        ids = [o["order_id"] for o in (r.json() or {}).get("orders", [])]
        check(g, f"A lists {path}", r.status == 200 and order_id in ids
              and all(o["user_id"] == a_id for o in r.json()["orders"]), "200 with A's order only", f"{r.status} {ids[:3]}")
    # B replaying A's Idempotency-Key gets B's own order, never A's.
    r = cl.call(stack.order_port, "POST", "/orders", {"sale_id": sale}, token=a_token, headers={"idempotency-key": f"k-{tag}"})
    a_keyed = r.json().get("order_id") if r.status in (200, 201) else None
    r = cl.call(stack.order_port, "POST", "/orders", {"sale_id": sale}, token=b_token, headers={"idempotency-key": f"k-{tag}"})
    check(g, "B reuses A's Idempotency-Key", r.status == 201 and r.json().get("user_id") == b_id
          and r.json().get("order_id") != a_keyed, "201, B's own new order", f"{r.status} {r.body[:80]!r}")
    for bad in ("does-not-exist", f"{sale}.{'0' * 26}", "../../stock/sales", "%00", "a" * 300):
        r = cl.call(stack.order_port, "GET", f"/orders/{bad}", token=b_token)
        expect(g, f"GET /orders/{bad[:20]}", r, 404)


def admin_calls(stack: cl.Stack, a_token: str, tag: str) -> None:
    g = "admin"
    sale = f"adm-{tag}"
    cl.create_sale(stack, sale, 3, 1)
    calls = [("POST", "/stock/sales", {"sale_id": f"x-{tag}", "name": "x", "stock": 1}),
             ("GET", f"/stock/sales/{sale}/breakdown", None),
             ("POST", f"/stock/sales/{sale}/reconcile", None),
             ("GET", f"/stock/sales/{sale}/orders", None)]
    for who, tok in (("user access token", a_token), ("no token", None), ("wrong admin token", stack.admin_token + "x"),
                     ("admin token prefix", stack.admin_token[:-1]), ("empty bearer", "")):
        for method, path, body in calls:
            hdr = {"authorization": "Bearer "} if tok == "" else None
            r = cl.call(stack.stock_port, method, path, body, token=tok or None, headers=hdr)
            expect(g, f"{method} {path.replace(sale, '{id}').replace(f'x-{tag}', '')}: {who}", r, 401, "unauthorized")
    r = cl.call(stack.stock_port, "GET", f"/stock/sales/x-{tag}")
    expect(g, "no sale was created by those", r, 404, "sale_not_found")


def inputs(stack: cl.Stack, minter: cl.Minter, a_token: str, a_id: str, tag: str) -> None:
    g = "input"
    sale = f"inp-{tag}"
    cl.create_sale(stack, sale, 5, 2)
    big = {"sale_id": sale, "pad": "x" * (16 * 1024 + 10)}
    routes = [(stack.auth_port, "/auth/register", {"username": f"big-{tag}", "password": "a long password", "pad": "x" * 17000}, None),
              (stack.auth_port, "/auth/login", {"username": f"big-{tag}", "password": "x" * 17000}, None),
              (stack.stock_port, "/stock/sales", {"sale_id": f"big-{tag}", "name": "x" * 17000, "stock": 1}, stack.admin_token),
              (stack.order_port, "/orders", big, a_token)]
    for port, path, body, tok in routes:
        r = cl.call(port, "POST", path, body, token=tok)
        expect(g, f"POST {path} 17 KB body", r, 413, "payload_too_large")
        # The same body streamed, with no Content-Length.
        data = json.dumps(body).encode()
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + 4096]), data[i:i + 4096]) for i in range(0, len(data), 4096))
        wire = (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                f"transfer-encoding: chunked\r\nconnection: close\r\n"
                + (f"authorization: Bearer {tok}\r\n" if tok else "") + "\r\n").encode() + chunks + b"0\r\n\r\n"
        status, _ = raw_request(port, wire)
        check(g, f"POST {path} 17 KB chunked", status == 413, "413", str(status))
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "", "application/xml"):
            hdr = {"content-type": ctype} if ctype else {}
            r = cl.call(port, "POST", path, token=tok, raw=json.dumps({"sale_id": sale}).encode(), headers=hdr)
            expect(g, f"POST {path} content-type {ctype or '(none)'}", r, 415, "unsupported_media_type")
    # Orders: every one of these is refused with 400 and stores nothing.
    bad_quantities = [0, -1, 3, 2**31, 2**32, 2**32 + 1, 2**63, 2**64, 10**30, 1.5, 1e308, "1", None, True, [1], {"q": 1}]
    for q in bad_quantities:
        body = {"sale_id": sale, "quantity": q}
        if q is None:
            body = {"sale_id": sale, "quantity": None}
        r = cl.call(stack.order_port, "POST", "/orders", token=a_token, raw=json.dumps(body).encode(),
                    headers={"content-type": "application/json"})
        want = 400
        if q is None:  # an explicit null is "absent": the default, 1
            check(g, "POST /orders quantity null", r.status in (201, 400), "400 or 201 (null = default)", f"{r.status} {r.code}")
            if r.status == 201:
                FAILED_STORE.append(r.json()["order_id"])
            continue
        expect(g, f"POST /orders quantity {json.dumps(q)[:20]}", r, want, "invalid_request")
    for body, what in (({"sale_id": sale, "quantity": 1, "extra": 1}, "unknown field"),
                       ({"quantity": 1}, "missing sale_id"),
                       ({"sale_id": 5}, "sale_id number"),
                       ({"sale_id": ["x"] * 3}, "sale_id array"),
                       ("[" * 5000 + "]" * 5000, "5000-deep JSON"),
                       ('{"sale_id": "%s", "sale_id": "other"}' % sale, "duplicate key"),
                       ("{nope", "malformed JSON"),
                       ("", "empty body"),
                       ('{"sale_id": "\\ud800"}', "lone surrogate escape")):
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        r = cl.call(stack.order_port, "POST", "/orders", token=a_token, raw=raw, headers={"content-type": "application/json"})
        expect(g, f"POST /orders {what}", r, 400, "invalid_request")
    for key, what in (("k" * 65, "65 chars"), ("", "empty"), ("caf\u00e9", "non-ASCII"), ("a b", "space")):
        try:
            r = cl.call(stack.order_port, "POST", "/orders", {"sale_id": sale}, token=a_token,
                        headers={"idempotency-key": key.encode("utf-8").decode("latin-1")})
        except Exception as e:  # noqa: BLE001 - a client that cannot send it at all
            check(g, f"Idempotency-Key {what}", True, "400", f"not sendable ({type(e).__name__})")
            continue
        expect(g, f"Idempotency-Key {what}", r, 400, "invalid_request")
    for sid, what in (("x" * 65, "65-char sale_id"), ("bad id", "space"), ("ñ", "unicode"), ("", "empty")):
        r = cl.call(stack.order_port, "POST", "/orders", {"sale_id": sid}, token=a_token)
        check(g, f"POST /orders {what}", r.status in (400, 404) and shape_ok(r), "400/404", f"{r.status} {r.code}")
    bd = cl.admin(stack, "GET", f"/stock/sales/{sale}/breakdown").json()
    r = cl.call(stack.order_port, "GET", f"/orders?sale_id={sale}", token=a_token)
    n_orders = len(r.json()["orders"]) if r.status == 200 else -1
    stored_ok = bd["stock_remaining"] == 5 - len(FAILED_STORE) and bd["held"] == 0 and n_orders == len(FAILED_STORE)
    check(g, "orders: nothing stored by the refused requests", stored_ok,
          "remaining 5, held 0, no orders", f"remaining {bd['stock_remaining']} held {bd['held']} orders {n_orders}")

    # Sales: out-of-range numbers and bad ids are 400 and create nothing.
    sale_cases = [({"stock": 0}, "stock 0"), ({"stock": -1}, "stock -1"), ({"stock": 10_000_001}, "stock 10,000,001"),
                  ({"stock": 2**63}, "stock 2^63"), ({"stock": 1.5}, "stock 1.5"), ({"stock": "5"}, "stock string"),
                  ({"per_user_limit": 0}, "per_user_limit 0"), ({"per_user_limit": -3}, "per_user_limit -3"),
                  ({"per_user_limit": 2**40}, "per_user_limit 2^40"),
                  ({"sale_id": "has space"}, "sale_id with space"), ({"sale_id": "x" * 65}, "65-char sale_id"),
                  ({"sale_id": "sälé"}, "unicode sale_id"), ({"sale_id": ""}, "empty sale_id"),
                  ({"starts_at": "tomorrow"}, "starts_at not RFC 3339"),
                  ({"ends_at": "2000-01-01T00:00:00Z"}, "ends_at before starts_at"),
                  ({"name": ""}, "empty name"), ({"name": "x" * 201}, "201-char name"), ({"extra": True}, "unknown field")]
    for i, (override, what) in enumerate(sale_cases):
        sid = f"bad{i}-{tag}"
        body = {"sale_id": sid, "name": "bad", "stock": 5, **override}
        r = cl.admin(stack, "POST", "/stock/sales", body)
        expect(g, f"POST /stock/sales {what}", r, 400, "invalid_request")
        target = body["sale_id"] if isinstance(body["sale_id"], str) and body["sale_id"] else sid
        import urllib.parse
        r2 = cl.call(stack.stock_port, "GET", f"/stock/sales/{urllib.parse.quote(target, safe='')}")
        check(g, f"  ...and no sale stored ({what})", r2.status == 404, "404", str(r2.status))
    r = cl.admin(stack, "POST", "/stock/sales", {"sale_id": sale, "name": "again", "stock": 5})
    expect(g, "POST /stock/sales existing id", r, 409, "sale_exists")

    # Usernames: the contract's pattern after lower-casing; passwords 12-128 chars.
    pw = "a fine password 1"
    name_cases = [("ålice", "å"), ("аdmin", "Cyrillic а"), ("ＡＢＣＤ", "fullwidth"), ("usér", "é"),
                  ("nul\u0000ab", "NUL"), ("emoji\U0001F600", "emoji"), ("ab", "2 chars"), ("x" * 33, "33 chars"),
                  ("has space", "space"), ("semi;colon", ";"), ("dotted.i\u0307", "combining dot"),
                  ("ß" * 3, "ß")]
    for name, what in name_cases:
        r = cl.call(stack.auth_port, "POST", "/auth/register", {"username": name, "password": pw})
        expect(g, f"register username {what}", r, 400, "invalid_request")
        r2 = cl.call(stack.auth_port, "POST", "/auth/login", {"username": name, "password": pw})
        check(g, f"  ...and no account ({what})", r2.status in (401, 429), "401", f"{r2.status} {r2.code}")
    # Unicode that lower-cases to ASCII (KELVIN SIGN) is, per the contract's
    # "after lower-casing", the ASCII name: it must not create a second,
    # look-alike account.
    kelvin = f"\u212aelvin{tag[:6]}"
    r = cl.call(stack.auth_port, "POST", "/auth/register", {"username": kelvin, "password": pw})
    if r.status == 201:
        stored = r.json().get("username")
        check(g, "register KELVIN SIGN name", stored == kelvin.lower() and stored.isascii(),
              "400, or stored as its ASCII lower-case", f"201 stored as {stored!r}")
        r2 = cl.call(stack.auth_port, "POST", "/auth/register", {"username": stored, "password": pw})
        expect(g, "  ...the ASCII spelling is then taken", r2, 409, "username_taken")
    else:
        expect(g, "register KELVIN SIGN name", r, 400, "invalid_request")
    for p, what in (("x" * 11, "11 chars"), ("x" * 129, "129 chars"), ("密" * 11, "11 CJK chars")):
        u = f"pw{len(p)}-{tag}"
        r = cl.call(stack.auth_port, "POST", "/auth/register", {"username": u, "password": p})
        expect(g, f"register password {what}", r, 400, "invalid_request")
        r2 = cl.call(stack.auth_port, "POST", "/auth/login", {"username": u, "password": p})
        check(g, f"  ...and no account ({what})", r2.status == 401, "401", f"{r2.status} {r2.code}")
    r = cl.call(stack.auth_port, "POST", "/auth/register", {"username": f"cjk-{tag}", "password": "密" * 12})
    expect(g, "register password 12 CJK chars (valid)", r, 201)
    r = cl.call(stack.auth_port, "POST", "/auth/register", {"username": f"x-{tag}", "password": pw, "admin": True})
    expect(g, "register with an extra field", r, 400, "invalid_request")
    r = cl.call(stack.auth_port, "POST", "/auth/register", {"username": 5, "password": pw})
    expect(g, "register username as a number", r, 400, "invalid_request")
    # Unknown routes and methods keep the contract's error shape.
    expect(g, "GET /nope", cl.call(stack.order_port, "GET", "/nope"), 404, "not_found")
    expect(g, "DELETE /orders", cl.call(stack.order_port, "DELETE", "/orders", token=a_token), 405, "method_not_allowed")
    expect(g, "GET /auth/login", cl.call(stack.auth_port, "GET", "/auth/login"), 405, "method_not_allowed")


def concurrency(stack: cl.Stack, minter: cl.Minter, tag: str) -> None:
    """One user at once: 50 checkouts (limit 2), and 50 replays of one key."""
    import asyncio
    g = "concurrency"
    sale = f"conc-{tag}"
    cl.create_sale(stack, sale, 100, 2)
    user = cl.fake_user_id()
    token = minter.token(user)

    async def burst(n: int, key: str | None, qty: int | None = None) -> list:
        client = cl.AsyncClient(stack.order_port, n, 20)
        body = {"sale_id": sale} if qty is None else {"sale_id": sale, "quantity": qty}

        async def one(i):
            h = {"authorization": f"Bearer {token}"}
            if key:
                h["idempotency-key"] = key
            return await client.request("POST", "/orders", body, h)
        out = await asyncio.gather(*(one(i) for i in range(n)))
        await client.close()
        return out

    res = asyncio.run(burst(50, None))
    created = [r for r in res if r.status == 201]
    from collections import Counter
    c = Counter(r.status for r in res)
    check(g, "50 checkouts at once by one user (limit 2)", len(created) == 2 and set(c) <= {201, 409, 503},
          "exactly 2 x 201, rest 409 limit_reached", str(dict(c)))
    user2 = cl.fake_user_id()
    token = minter.token(user2)
    res = asyncio.run(burst(50, f"same-{tag}"))
    ids = {r.json().get("order_id") for r in res if r.status in (200, 201)}
    c = Counter(r.status for r in res)
    check(g, "50 replays of one Idempotency-Key at once", len(ids) == 1 and c.get(201, 0) == 1
          and set(c) <= {200, 201, 503}, "one order: 1 x 201, the rest 200 (or 503)", f"{dict(c)}, {len(ids)} order ids")
    res = asyncio.run(burst(20, f"same-{tag}", qty=2))
    c = Counter((r.status, r.code) for r in res)
    check(g, "the same key, another quantity, 20 at once", set(c) <= {(409, "idempotency_key_reused"), (503, "overloaded")}
          and (409, "idempotency_key_reused") in c, "409 idempotency_key_reused", str(dict(c)))
    r = cl.call(stack.order_port, "GET", f"/orders?sale_id={sale}", token=token)
    check(g, "  ...and that user has exactly one order", r.status == 200 and len(r.json()["orders"]) == 1,
          "1 order", f"{r.status} {len((r.json() or {}).get('orders', []))}")
    bd = cl.admin(stack, "GET", f"/stock/sales/{sale}/breakdown").json()
    check(g, "sale after the bursts", bd["ledger_confirmed"] == 3 and bd["balanced"] and bd["consistent"],
          "3 units confirmed, balanced, consistent", f"ledger {bd['ledger_confirmed']} held {bd['held']} balanced {bd['balanced']}")


def rate_limits(stack: cl.Stack, minter: cl.Minter, tag: str) -> None:
    """Per-user checkout rate limit (OWASP API6). The chaos stack is reached
    over loopback, which is exempt from the per-IP limit (see
    common/src/client_ip.rs and tests/rate_limits.rs for that one)."""
    from collections import Counter
    g = "rate limits"
    sale = f"rl-{tag}"
    cl.create_sale(stack, sale, 1000, 1)
    token = minter.token(cl.fake_user_id())
    replies = [cl.call(stack.order_port, "POST", "/orders", {"sale_id": sale}, token=token) for _ in range(200)]
    c = Counter((r.status, r.code) for r in replies)
    limited = [r for r in replies if r.status == 429]
    check(g, "200 checkouts back to back by one user", c.get((201, None), 0) + c.get((201, ""), 0) == 1
          and set(c) <= {(201, None), (201, ""), (409, "limit_reached"), (429, "rate_limited")} and len(limited) >= 20,
          "1 x 201, 409 limit_reached, then >= 20 x 429 rate_limited", str(dict(c)))
    check(g, "every 429 carries Retry-After", all(r.headers.get("retry-after", "").isdigit() for r in limited),
          "Retry-After: seconds", str({r.headers.get("retry-after") for r in limited}))
    for r in limited[:1]:
        expect(g, "429 in the contract's error shape", r, 429, "rate_limited")
    bd = cl.admin(stack, "GET", f"/stock/sales/{sale}/breakdown").json()
    check(g, "  ...and the sale holds nothing for them", bd["ledger_confirmed"] == 1 and bd["held"] == 0 and bd["balanced"],
          "1 confirmed, 0 held, balanced", f"ledger {bd['ledger_confirmed']} held {bd['held']} balanced {bd['balanced']}")


FAILED_STORE: list[str] = []
MEDIANS: list[tuple[float, float, float]] = []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--samples", type=int, default=40, help="login timing samples per kind (default 40)")
    args = ap.parse_args()
    stack = cl.Stack()
    # A function whose Redis connection went stale (e.g. after a Redis restart
    # in run.py) may fail its first call: allow a few seconds to become ready.
    def healthy() -> bool:
        return all(cl.call(p, "GET", "/healthz", timeout=5).status == 200
                   for p in (stack.auth_port, stack.stock_port, stack.order_port))
    if not cl.wait_until(healthy, 20, 0.5):
        print("the chaos stack is not up (infra/chaos/chaos.sh up)", file=sys.stderr)
        return 2
    minter = cl.Minter(stack.secrets()["TOKEN_SIGNING_KEY"])
    tag = cl.unique("ab").replace("ab-", "")
    started = time.monotonic()
    a_id, a_token = register_login(stack, f"alice-{tag}", "alice's long password")
    b_id, b_token = register_login(stack, f"bob-{tag}", "bob's long password!")
    medians = None
    for name, fn in (("tokens", lambda: tokens(stack, minter, a_id, a_token, b_id)),
                     ("enumeration", lambda: enumeration(stack, args.samples, tag)),
                     ("throttling", lambda: throttling(stack, tag)),
                     ("ownership", lambda: ownership(stack, a_token, b_token, a_id, b_id, tag)),
                     ("admin", lambda: admin_calls(stack, a_token, tag)),
                     ("concurrency", lambda: concurrency(stack, minter, tag)),
                     ("rate limits", lambda: rate_limits(stack, minter, tag)),
                     ("inputs", lambda: inputs(stack, minter, a_token, a_id, tag))):
        try:
            out = fn()
            if name == "enumeration":
                medians = out
        except Exception as e:  # noqa: BLE001 - a check that broke is a failed check
            check(name, "ran to the end", False, "no exception", f"{type(e).__name__}: {e}")
    print(cl.table(["group", "check", "expected", "got", "verdict"], ROWS,
                   title=f"== abuse checks ({len(ROWS)} checks, {time.monotonic() - started:.0f}s) =="))
    for i, (u, w, d) in enumerate(MEDIANS, 1):
        print(f"\nlogin medians, round {i}: unknown user {u * 1000:.1f} ms, wrong password {w * 1000:.1f} ms ({d:.1%} apart)")
    if FAILED:
        print(f"\n{len(FAILED)} FAILED:")
        for f in FAILED:
            print(f"  - {f}")
        return 1
    print(f"\nall {len(ROWS)} abuse checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
