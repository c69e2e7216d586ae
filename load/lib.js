// Shared pieces of the k6 suites: configuration from the environment, the
// API calls with their expected answers, custom metrics, and the summary
// (a JSON file in load/results/ plus a short text block on stdout).
//
// Expected answers are NOT errors: a 409 sold_out / limit_reached at checkout
// is the system saying no correctly, and a 503 overloaded with Retry-After
// from auth is its designed load shedding (counted apart, in `shed`). Only
// answers the contract does not allow for that call count in
// `unexpected_errors`.
import http from "k6/http";
import { check, sleep } from "k6";
import { Counter, Rate, Trend } from "k6/metrics";

export const BASE_URL = (__ENV.BASE_URL || "http://127.0.0.1:8080").replace(/\/+$/, "");
// Admin calls go to the stock function; through the router by default.
export const STOCK_URL = (__ENV.STOCK_URL || BASE_URL).replace(/\/+$/, "");
export const ADMIN_TOKEN = __ENV.ADMIN_TOKEN || "dev-admin-token";
export const RUN_ID = __ENV.RUN_ID || `${Date.now().toString(36)}`;
export const RESULTS_DIR = __ENV.RESULTS_DIR || "load/results";

export function envInt(name, dflt) {
  const v = __ENV[name];
  if (v === undefined || v === "") return dflt;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`${name}=${v} is not a number`);
  return n;
}
export function envStr(name, dflt) {
  const v = __ENV[name];
  return v === undefined || v === "" ? dflt : v;
}

// 2xx and 409 are answers, not transport failures, for http_req_failed.
http.setResponseCallback(http.expectedStatuses({ min: 200, max: 299 }, 409));

// ---------------------------------------------------------------- metrics
// Latency trends are in milliseconds (isTime = true).
export const m = {
  checkoutCreated: new Trend("checkout_created", true), // 201 (and 200 replays)
  checkoutSoldOut: new Trend("checkout_sold_out", true), // 409 sold_out
  checkoutAll: new Trend("checkout_all", true), // every checkout answer
  stockView: new Trend("stock_view", true),
  login: new Trend("auth_login", true),
  register: new Trend("auth_register", true),
  unexpected: new Rate("unexpected_errors"),
  shed: new Rate("shed"), // 503 overloaded (with Retry-After) among calls that can shed
  ordersCreated: new Counter("orders_created"),
  soldOut: new Counter("sold_out"),
  limitReached: new Counter("limit_reached"),
  replayMismatch: new Counter("replay_mismatch"),
  gaveUp: new Counter("gave_up_after_retries"),
};

const JSON_HEADERS = { "Content-Type": "application/json" };

function errorCode(res) {
  try {
    const b = res.json();
    return b && b.error ? b.error.code : null;
  } catch (_) {
    return null;
  }
}

function retryAfter(res, dflt) {
  const v = parseFloat(res.headers["Retry-After"] || res.headers["retry-after"]);
  return Number.isFinite(v) ? v : dflt;
}

function note(ok, name, res) {
  m.unexpected.add(!ok, { call: name });
  if (!ok && __ENV.LOAD_DEBUG) console.warn(`${name}: ${res.status} ${String(res.body).slice(0, 200)}`);
}

// ---------------------------------------------------------------- admin

export function adminHeaders() {
  return { ...JSON_HEADERS, Authorization: `Bearer ${ADMIN_TOKEN}` };
}

/** Creates a sale (setup only); throws unless 201. */
export function createSale(saleId, stock, perUserLimit, name) {
  const body = { sale_id: saleId, name: name || `load ${saleId}`, stock, per_user_limit: perUserLimit };
  const res = http.post(`${STOCK_URL}/stock/sales`, JSON.stringify(body), {
    headers: adminHeaders(),
    tags: { name: "admin_create_sale" },
  });
  if (res.status !== 201) {
    throw new Error(`creating sale ${saleId}: ${res.status} ${res.body} (is the stack up at ${STOCK_URL}? ADMIN_TOKEN right?)`);
  }
  return res.json();
}

// ---------------------------------------------------------------- calls

/** GET /stock/sales/{id}: 200 is the only expected answer. */
export function stockView(saleId) {
  const res = http.get(`${BASE_URL}/stock/sales/${saleId}`, { tags: { name: "stock_view" } });
  m.stockView.add(res.timings.duration);
  const ok = res.status === 200;
  note(ok, "stock_view", res);
  check(res, { "stock view 200": () => ok });
  return ok ? res.json() : null;
}

/** POST /auth/register; 503 overloaded is retried after Retry-After. Returns true if the user exists now. */
export function register(username, password, tries = 5) {
  for (let i = 0; i < tries; i++) {
    const res = http.post(`${BASE_URL}/auth/register`, JSON.stringify({ username, password }), {
      headers: JSON_HEADERS,
      tags: { name: "auth_register" },
    });
    m.register.add(res.timings.duration);
    const shed = res.status === 503 && errorCode(res) === "overloaded";
    m.shed.add(shed, { call: "auth_register" });
    if (shed) {
      sleep(retryAfter(res, 1) * (0.5 + Math.random()));
      continue;
    }
    const ok = res.status === 201 || (res.status === 409 && errorCode(res) === "username_taken");
    note(ok, "auth_register", res);
    check(res, { "register 201": () => ok });
    return ok;
  }
  m.gaveUp.add(1, { call: "auth_register" });
  return false;
}

/** POST /auth/login; 503 overloaded is retried. Returns the access token or null. */
export function login(username, password, tries = 5) {
  for (let i = 0; i < tries; i++) {
    const res = http.post(`${BASE_URL}/auth/login`, JSON.stringify({ username, password }), {
      headers: JSON_HEADERS,
      tags: { name: "auth_login" },
    });
    m.login.add(res.timings.duration);
    const shed = res.status === 503 && errorCode(res) === "overloaded";
    m.shed.add(shed, { call: "auth_login" });
    if (shed) {
      sleep(retryAfter(res, 1) * (0.5 + Math.random()));
      continue;
    }
    const ok = res.status === 200;
    note(ok, "auth_login", res);
    check(res, { "login 200": () => ok });
    return ok ? res.json().access_token : null;
  }
  m.gaveUp.add(1, { call: "auth_login" });
  return null;
}

/**
 * POST /orders. Expected: 201 (new), 200 (replay of the same key), 409
 * sold_out / limit_reached. A 503 is retried with the SAME Idempotency-Key
 * (that is what the key is for) and counts as unexpected only if it persists.
 * With retryFor > 0 (seconds) a keyed 503 is retried until then instead: a
 * 503 after a ledger time-out means "outcome unknown", and the same key
 * tells the buyer the truth once the hold is resolved (hold TTL + a sweep).
 * Returns {kind, order} with kind created|replayed|sold_out|limit_reached|error.
 */
export function checkout(token, saleId, key, tries = 3, retryFor = 0) {
  const deadline = Date.now() + retryFor * 1000;
  const headers = { ...JSON_HEADERS, Authorization: `Bearer ${token}` };
  if (key) headers["Idempotency-Key"] = key; // no key: the unkeyed (cacheable sold-out) path
  const params = { headers, tags: { name: "checkout" } };
  const body = JSON.stringify({ sale_id: saleId });
  for (let i = 0; i < tries || (key && retryFor > 0 && Date.now() < deadline); i++) {
    const res = http.post(`${BASE_URL}/orders`, body, params);
    const d = res.timings.duration;
    m.checkoutAll.add(d);
    m.shed.add(res.status === 503, { call: "checkout" });
    if (res.status === 201 || res.status === 200) {
      m.checkoutCreated.add(d);
      if (res.status === 201) m.ordersCreated.add(1);
      note(true, "checkout", res);
      return { kind: res.status === 201 ? "created" : "replayed", order: res.json() };
    }
    const code = errorCode(res);
    if (res.status === 409 && code === "sold_out") {
      m.checkoutSoldOut.add(d);
      m.soldOut.add(1);
      note(true, "checkout", res);
      return { kind: "sold_out" };
    }
    if (res.status === 409 && code === "limit_reached") {
      m.limitReached.add(1);
      note(true, "checkout", res);
      return { kind: "limit_reached" };
    }
    const retryable = i + 1 < tries || (key && retryFor > 0 && Date.now() < deadline);
    if (res.status === 503 && retryable) {
      sleep(retryFor > 0 ? retryAfter(res, 1) * (0.5 + Math.random()) : Math.min(retryAfter(res, 0.2), 1) * Math.random());
      continue;
    }
    note(false, "checkout", res);
    check(res, { "checkout answered as the contract says": () => false });
    return { kind: "error", status: res.status, code };
  }
  return { kind: "error" };
}

/** Replays a checkout with the same key: must be 200 with the very same order. */
export function verifyReplay(token, saleId, key, order) {
  const again = checkout(token, saleId, key, 2);
  const same = again.kind === "replayed" && again.order && again.order.order_id === order.order_id;
  if (!same) m.replayMismatch.add(1);
  check(again, { "replay returns the same order": () => same });
}

// ---------------------------------------------------------------- summary

function fmt(v) {
  return v === undefined || v === null ? "-" : typeof v === "number" ? (Math.round(v * 100) / 100).toString() : String(v);
}

/** handleSummary body shared by the suites: JSON file + compact stdout. */
export function summarize(suite, data) {
  const ts = __ENV.RESULTS_TS || new Date().toISOString().replace(/[:.]/g, "-");
  const file = __ENV.SUMMARY_FILE || `${RESULTS_DIR}/${suite}-${ts}.json`;
  const metrics = data.metrics;
  const lines = [`\n== ${suite} (run ${RUN_ID}) against ${BASE_URL}`];
  const trend = (name) => {
    const t = metrics[name];
    if (!t) return;
    const v = t.values;
    lines.push(
      `  ${name.padEnd(20)} n=${fmt(v.count !== undefined ? v.count : "")} avg=${fmt(v.avg)} p50=${fmt(v.med)} p95=${fmt(v["p(95)"])} p99=${fmt(v["p(99)"])} max=${fmt(v.max)} ms`
    );
  };
  ["checkout_created", "checkout_sold_out", "checkout_all", "stock_view", "auth_login", "auth_register", "http_req_duration"].forEach(trend);
  const count = (name) => (metrics[name] ? metrics[name].values.count : 0);
  const rate = (name) => (metrics[name] ? metrics[name].values.rate : undefined);
  lines.push(
    `  orders_created=${count("orders_created")} sold_out=${count("sold_out")} limit_reached=${count("limit_reached")} replay_mismatch=${count("replay_mismatch")} gave_up=${count("gave_up_after_retries")}`
  );
  lines.push(
    `  http_reqs=${count("http_reqs")} (${fmt(rate("http_reqs"))}/s) unexpected_errors=${fmt(rate("unexpected_errors"))} shed=${fmt(rate("shed"))} http_req_failed=${fmt(rate("http_req_failed"))} dropped_iterations=${count("dropped_iterations")}`
  );
  const failed = [];
  for (const [name, metric] of Object.entries(metrics)) {
    for (const [th, res] of Object.entries(metric.thresholds || {})) {
      lines.push(`  threshold ${res.ok ? "ok  " : "FAIL"} ${name}: ${th}`);
      if (!res.ok) failed.push(`${name}: ${th}`);
    }
  }
  lines.push(`  summary: ${file}`);
  const out = {
    suite,
    run_id: RUN_ID,
    base_url: BASE_URL,
    finished_at: new Date().toISOString(),
    sales: (data.setup_data && data.setup_data.sales) || [],
    // Sales that must end sold out with exactly stock_total sold (audit --expect-sold-out).
    expect_sold_out: (data.setup_data && data.setup_data.expect_sold_out) || [],
    thresholds_failed: failed,
    state: data.state,
    options: { scenarios: data.options && data.options.scenarios },
    metrics: Object.fromEntries(Object.entries(metrics).map(([k, v]) => [k, { type: v.type, values: v.values, thresholds: v.thresholds }])),
  };
  return { stdout: lines.join("\n") + "\n", [file]: JSON.stringify(out, null, 2) };
}

/** "90s", "2m", "1h30m" -> seconds. */
export function seconds(d) {
  let total = 0;
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/g;
  let hit;
  while ((hit = re.exec(String(d)))) total += Number(hit[1]) * { ms: 0.001, s: 1, m: 60, h: 3600 }[hit[2]];
  return total;
}

export const TREND_STATS = ["avg", "min", "med", "max", "p(90)", "p(95)", "p(99)", "count"];
