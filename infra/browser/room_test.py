#!/usr/bin/env python3
"""The waiting-room page (GET /stock/sales/{id}/room) in a real headless
Chromium, driven by Playwright, against a running stack at BASE_URL (one
origin: /auth, /stock, /orders, as the local router serves them).

Scenarios (each on a sale of its own, created through the admin API):
  buy        join behind others -> position, estimated wait and live stock
             shown -> admitted -> buy -> order confirmed shown (and in the ledger)
  sold-out   a buyer waiting while the last unit goes is told sold out; a
             buyer arriving after it is told so on joining
  expired    admission_ttl_seconds 2, left unused: the page says expired
  errors     a wrong password; a sale that does not exist

Screenshots go to SCREENSHOT_DIR (default target/browser/). Exit 0 when every
scenario passed; any failure raises (exit 1) with what the page showed.

Env: BASE_URL, ADMIN_TOKEN, CHROMIUM (/usr/bin/chromium), SCREENSHOT_DIR.
"""

import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright

BASE = os.environ.get("BASE_URL", "http://127.0.0.1:8080").rstrip("/")
ADMIN = os.environ.get("ADMIN_TOKEN", "dev-admin-token")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = os.environ.get("SCREENSHOT_DIR", "target/browser")
RUN = f"{int(time.time()):x}{os.getpid() % 256:02x}"
PASSWORD = "browser test password"


def api(method, path, body=None, token=None, headers=None):
    """One call on the stack; returns (status, json body or {}, headers)."""
    h = {"content-type": "application/json"}
    if token:
        h["authorization"] = f"Bearer {token}"
    h.update(headers or {})
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(BASE + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            raw, status, hdrs = r.read(), r.status, r.headers
    except urllib.error.HTTPError as e:
        raw, status, hdrs = e.read(), e.code, e.headers
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        parsed = {"raw": raw.decode(errors="replace")}
    return status, parsed, hdrs


def must(expected, got, what):
    status, body, _ = got
    if status not in expected:
        raise AssertionError(f"{what}: expected {expected}, got {status} {body}")
    return body


def user(name):
    """Registers and logs in a fresh user; returns (username, access token)."""
    username = f"bw-{RUN}-{name}"
    must((201,), api("POST", "/auth/register", {"username": username, "password": PASSWORD}), f"register {username}")
    body = must((200,), api("POST", "/auth/login", {"username": username, "password": PASSWORD}), f"login {username}")
    return username, body["access_token"]


def sale(name, stock, rate, ttl=None):
    sale_id = f"bw-{RUN}-{name}"
    room = {"admit_per_second": rate}
    if ttl is not None:
        room["admission_ttl_seconds"] = ttl
    body = {"sale_id": sale_id, "name": f"browser {name}", "stock": stock, "per_user_limit": 1, "waiting_room": room}
    view = must((201,), api("POST", "/stock/sales", body, headers={"authorization": f"Bearer {ADMIN}"}), f"create {sale_id}")
    if view.get("waiting_room", {}).get("admit_per_second") != rate:
        raise AssertionError(f"sale view lacks its waiting_room: {view}")
    return sale_id


def join(sale_id, token):
    return must((201, 200), api("POST", f"/stock/sales/{sale_id}/queue", token=token), f"join {sale_id}")


def wait_admitted(sale_id, ticket, token, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = must((200,), api("GET", f"/stock/sales/{sale_id}/queue/{ticket}", token=token), "poll")
        if body["status"] == "admitted":
            return body["admission_token"]
        if body["status"] != "waiting":
            raise AssertionError(f"ticket {ticket} ended {body}")
        time.sleep(0.3)
    raise AssertionError(f"ticket {ticket} not admitted within {timeout}s")


def buy(sale_id, token, admission):
    return must((201,), api("POST", "/orders", {"sale_id": sale_id}, token=token, headers={"admission-token": admission}), "checkout")


def sign_in_and_join(page, sale_id, username, password=PASSWORD):
    page.goto(f"{BASE}/stock/sales/{sale_id}/room")
    expect(page.locator("#stock")).to_have_text(re.compile(r"^\d+$"))
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#join")


def shot(page, name):
    path = os.path.join(SHOTS, f"room-{name}.png")
    page.screenshot(path=path, full_page=True)
    print(f"  screenshot {path}")


# ---------------------------------------------------------------- scenarios


def scenario_buy(page):
    """Behind four others at one admission a second: the page shows the place,
    the estimated wait and the stock as it moves, then admits and buys."""
    sale_id = sale("buy", stock=10, rate=1, ttl=60)
    fillers = [user(f"buy-f{i}") for i in range(4)]
    tickets = [join(sale_id, tok) for _, tok in fillers]
    name, token = user("buy-page")
    sign_in_and_join(page, sale_id, name)
    expect(page.locator("#status")).to_have_text("waiting")
    position = int(page.locator("#position").inner_text())
    if position < 1:
        raise AssertionError(f"page shows position {position} behind four buyers")
    expect(page.locator("#wait")).to_have_text(re.compile(r"^\d+ s$"))
    wait_s = int(page.locator("#wait").inner_text().split()[0])
    if wait_s < 1:
        raise AssertionError(f"estimated wait {wait_s} s at position {position}, 1 admission/s")
    expect(page.locator("#stock")).to_have_text("10")
    shot(page, "waiting")
    # The first in line buys while the page waits: the page's stock follows.
    first_admission = wait_admitted(sale_id, tickets[0]["ticket"], fillers[0][1])
    buy(sale_id, fillers[0][1], first_admission)
    expect(page.locator("#stock")).to_have_text("9", timeout=10_000)
    # Admitted once the three others' admissions are out (1/s): a Buy button.
    expect(page.locator("#status")).to_have_text("admitted", timeout=30_000)
    expect(page.locator("#buy")).to_be_visible()
    shot(page, "admitted")
    page.click("#buy")
    expect(page.locator("#message")).to_have_text(re.compile(r"^Order \S+ confirmed\.$"), timeout=15_000)
    expect(page.locator("#status")).to_have_text("bought")
    expect(page.locator("#stock")).to_have_text("8", timeout=10_000)
    order_id = page.locator("#message").inner_text().split()[1]
    shot(page, "bought")
    orders = must((200,), api("GET", f"/orders?sale_id={sale_id}", token=token), "my orders")["orders"]
    if [o["order_id"] for o in orders] != [order_id] or orders[0]["status"] != "confirmed":
        raise AssertionError(f"the page said order {order_id}; the ledger has {orders}")
    print(f"  buy: position {position}, estimated {wait_s} s, order {order_id} confirmed")


def scenario_sold_out(page):
    """A buyer in line when the last unit goes learns it on the next poll; one
    arriving later is told on joining."""
    sale_id = sale("soldout", stock=1, rate=1, ttl=60)
    first, first_token = user("so-first")
    t = join(sale_id, first_token)
    admission = wait_admitted(sale_id, t["ticket"], first_token)
    name, _ = user("so-page")
    sign_in_and_join(page, sale_id, name)
    # One unit, held by the first buyer's open admission: the page waits.
    expect(page.locator("#status")).to_have_text("waiting")
    buy(sale_id, first_token, admission)
    expect(page.locator("#status")).to_have_text("sold_out", timeout=10_000)
    expect(page.locator("#message")).to_have_text(re.compile(r"^Sold out"))
    expect(page.locator("#buy")).to_be_hidden()
    expect(page.locator("#stock")).to_have_text("0")
    shot(page, "sold-out-waiting")
    late, _ = user("so-late")
    sign_in_and_join(page, sale_id, late)
    expect(page.locator("#message")).to_have_text(re.compile(r"^Sold out"))
    expect(page.locator("#line")).to_be_hidden()
    shot(page, "sold-out-join")
    print("  sold out: the waiting buyer and a late one both told")


def scenario_expired(page):
    """Admitted at once (an idle room), the admission left unused for its 2 s."""
    sale_id = sale("expired", stock=5, rate=5, ttl=2)
    name, token = user("exp-page")
    sign_in_and_join(page, sale_id, name)
    expect(page.locator("#status")).to_have_text("admitted")
    expect(page.locator("#buy")).to_be_visible()
    expect(page.locator("#status")).to_have_text("expired", timeout=10_000)
    expect(page.locator("#message")).to_have_text(re.compile(r"expired", re.I))
    expect(page.locator("#buy")).to_be_hidden()
    shot(page, "expired")
    orders = must((200,), api("GET", f"/orders?sale_id={sale_id}", token=token), "my orders")["orders"]
    if orders:
        raise AssertionError(f"an expired admission bought {orders}")
    print("  expired: shown after the 2 s admission lapsed")


def scenario_errors(page):
    sale_id = sale("errors", stock=5, rate=5)
    name, _ = user("err-page")
    sign_in_and_join(page, sale_id, name, password="not the password at all")
    expect(page.locator("#message")).to_have_text("Wrong username or password.")
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#line")).to_be_hidden()
    shot(page, "wrong-password")
    page.goto(f"{BASE}/stock/sales/bw-{RUN}-nosuchsale/room")
    expect(page.locator("#message")).to_have_text("No such sale.")
    print("  errors: wrong password and an unknown sale shown")


def main():
    os.makedirs(SHOTS, exist_ok=True)
    if not os.access(CHROMIUM, os.X_OK):
        sys.exit(f"room_test: no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)")
    failures = []
    with tempfile.TemporaryDirectory(prefix="room-chromium-") as profile, sync_playwright() as pw:
        # A fresh profile of its own (Playwright names it --user-data-dir).
        browser = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            viewport={"width": 640, "height": 720},
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        print(f"chromium {browser.browser.version if browser.browser else '?'} (profile {profile}) against {BASE}")
        expect.set_options(timeout=10_000)
        for scenario in (scenario_buy, scenario_sold_out, scenario_expired, scenario_errors):
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
            print(f"- {scenario.__name__}")
            try:
                scenario(page)
                if errors:
                    raise AssertionError(f"JavaScript errors on the page: {errors}")
            except Exception as e:  # report every scenario, then fail
                failures.append(f"{scenario.__name__}: {e}")
                print(f"  FAILED: {e}\n  page said: {page.locator('body').inner_text()[:400]!r}")
                try:
                    shot(page, f"failed-{scenario.__name__}")
                except Exception:  # the page itself may be gone
                    pass
            finally:
                page.close()
        browser.close()
    if failures:
        print(f"\nroom_test: {len(failures)} scenario(s) FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("\nroom_test: all scenarios passed")


if __name__ == "__main__":
    main()
