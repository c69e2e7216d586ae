// Shared pieces of the k6 suites: configuration from the environment, the
// API calls with their expected answers, custom metrics, the generator's own
// health checks, and the summary (a JSON file in load/results/ plus a short
// text block on stdout that ends with the run's verdict).
//
// Expected answers are NOT errors: a 409 sold_out / limit_reached at checkout
// is the system saying no correctly, and a 503 overloaded with Retry-After
// from auth is its designed load shedding (counted apart, in `shed`). Only
// answers the contract does not allow for that call count in
// `unexpected_errors`.
import http from "k6/http";
import exec from "k6/execution";
import { check, sleep } from "k6";
import { Counter, Rate, Trend } from "k6/metrics";

const BASE_URL = (__ENV.BASE_URL || "http://127.0.0.1:8080").replace(/\/+$/, "");
// Each function's own URL; BASE_URL (one router or gateway for all three)
// unless set. Knative gives every function a URL of its own, and run.sh
// points them past the local dev router, which opens a new upstream
// connection per request: its cost is no function's.
const fnUrl = (name) => (__ENV[name] || BASE_URL).replace(/\/+$/, "");
export const AUTH_URL = fnUrl("AUTH_URL");
export const STOCK_URL = fnUrl("STOCK_URL"); // stock views and admin calls
export const ORDER_URL = fnUrl("ORDER_URL");
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

// Cores the load generator may use: run.sh passes `nproc` (which honours
// taskset). The suites size their default load from it, so the documented
// commands offer what this machine's k6 can really offer; unset (k6 run by
// hand, a cluster run), they default to their full-scale shape.
export const GEN_CORES = envInt("GEN_CORES", 0);

/** A default that scales with GEN_CORES: perCore × cores, at most `cap`; `full` when GEN_CORES is unset. */
export function byCores(perCore, full, cap = Infinity) {
  return GEN_CORES > 0 ? Math.max(1, Math.min(cap, Math.round(perCore * GEN_CORES))) : full;
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
  // The generator's own health (see "generator" below).
  generatorLag: new Trend("generator_lag", true),
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

/** Creates a sale (setup only); throws unless 201, or 409 sale_exists when `mayExist`. */
export function createSale(saleId, stock, perUserLimit, name, mayExist = false) {
  const body = { sale_id: saleId, name: name || `load ${saleId}`, stock, per_user_limit: perUserLimit };
  const res = http.post(`${STOCK_URL}/stock/sales`, JSON.stringify(body), {
    headers: adminHeaders(),
    tags: { name: "admin_create_sale" },
  });
  if (mayExist && res.status === 409 && errorCode(res) === "sale_exists") return null;
  if (res.status !== 201) {
    throw new Error(`creating sale ${saleId}: ${res.status} ${res.body} (is the stack up at ${STOCK_URL}? ADMIN_TOKEN right?)`);
  }
  return res.json();
}

// ---------------------------------------------------------------- calls

/** GET /stock/sales/{id}: 200 is the only expected answer. */
export function stockView(saleId) {
  const res = http.get(`${STOCK_URL}/stock/sales/${saleId}`, { tags: { name: "stock_view" } });
  m.stockView.add(res.timings.duration);
  const ok = res.status === 200;
  note(ok, "stock_view", res);
  check(res, { "stock view 200": () => ok });
  return ok ? res.json() : null;
}

/** POST /auth/register; 503 overloaded is retried after Retry-After. Returns true if the user exists now. */
export function register(username, password, tries = 5) {
  for (let i = 0; i < tries; i++) {
    const res = http.post(`${AUTH_URL}/auth/register`, JSON.stringify({ username, password }), {
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
    const res = http.post(`${AUTH_URL}/auth/login`, JSON.stringify({ username, password }), {
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
    const res = http.post(`${ORDER_URL}/orders`, body, params);
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

// ---------------------------------------------------------------- generator
//
// A run measures the engine only while k6 itself keeps up, and k6 fails to
// in two ways. An arrival-rate scenario that finds no free VU drops the
// arrival (`dropped_iterations`): the load the suite promised was not
// offered, so even latencies that pass say nothing about that load. And a k6
// short of CPU (or on a machine that stalls under it) runs late: its delay
// lands in every latency it measures. k6 counts the first; a probe VU
// measures the second (it sleeps PROBE_MS at a time and records how late it
// wakes: the same scheduling delay a response waits before k6 timestamps
// it). Lateness can only add to a latency, so it voids the budgets that
// FAILED by less than it could explain; budgets that held, held. verdictOf()
// applies both; run.sh adds what only it can read: k6's CPU, from /proc.

const PROBE_MS = 10;
// Share of the scheduled arrivals k6 may drop and still have offered the load it claims.
const DROP_TOLERANCE = Number(envStr("DROP_TOLERANCE", "0.001"));

/** A scenario running the lag probe for `duration` from `startTime`; its samples are tagged phase=`phase`. */
export function probeScenario(phase, duration, startTime = "0s") {
  return {
    executor: "constant-vus",
    // A distributed run (k6-operator) deals VUs out over its runners: set
    // PROBE_VUS to its parallelism so that every runner probes itself.
    vus: envInt("PROBE_VUS", 1),
    duration,
    startTime,
    exec: "generatorProbe",
    tags: { phase },
    gracefulStop: "1s",
  };
}

/** The probe's iteration (each suite re-exports it so that scenarios can name it). */
export function generatorProbe() {
  // The test-run clock has sub-millisecond resolution; Date.now() has 1 ms.
  const t0 = exec.instance.currentTestRunDuration;
  sleep(PROBE_MS / 1000);
  // A stall of L ms delays everything due during it, not one wake-up: record
  // L, L - PROBE_MS, ... (the wake-ups it swallowed), so that the lag's p99
  // is the lateness at a random instant, as a request's p99 would feel it.
  const late = Math.max(0, exec.instance.currentTestRunDuration - t0 - PROBE_MS);
  for (let lag = late; lag >= 0; lag -= PROBE_MS) m.generatorLag.add(lag);
}

/**
 * The largest probe lag p99 (ms) under which a latency budget of `budgetMs`
 * that fails is the engine's failure: half the budget (the engine then
 * missed at least half of it by itself); never under 2 ms, just above what
 * the probe sees on an idle machine (p99 1.6 ms on the 2-vCPU box).
 * GEN_LAG_P99_MS sets one limit for every budget.
 */
function lagLimit(budgetMs) {
  return envInt("GEN_LAG_P99_MS", Math.max(2, budgetMs / 2));
}

/**
 * The generator's own thresholds. `phases`: the suite's probe phases, each
 * given a threshold that cannot fail (`max>=0`) only so that k6 reports
 * the phase's lag apart (it keeps sub-metrics that a threshold names);
 * verdictOf() judges them. `arrivals`: what the suite's arrival-rate
 * scenarios schedule (0 for a closed-model suite, which cannot drop any).
 */
export function generatorThresholds(phases, arrivals) {
  const t = {};
  for (const phase of phases) t[`generator_lag{phase:${phase}}`] = ["max>=0"];
  if (arrivals > 0) t.dropped_iterations = [`count<=${Math.floor(arrivals * DROP_TOLERANCE)}`];
  return t;
}

// What a threshold judges: dropped arrivals say whether the load was offered
// at all; latency budgets (Trend metrics) say how fast the engine answered,
// if the generator's clock allows it to tell; every other threshold (answers
// the contract does not allow, more orders than units, a replay answering
// another order) is the engine's doing, however the load was offered.
function thresholdKind(name, type) {
  const base = name.split("{")[0];
  if (base === "dropped_iterations") return "generator";
  if (base === "generator_lag") return "probe";
  return type === "trend" ? "latency" : "outcome";
}

/** Probe lag p99 and max per phase, from the sub-metrics generatorThresholds() asked for. */
function lagByPhase(metrics) {
  const lag = {};
  for (const [name, metric] of Object.entries(metrics)) {
    const phase = /^generator_lag\{phase:(.+)\}$/.exec(name);
    if (phase) lag[phase[1]] = { p99: metric.values["p(99)"], max: metric.values.max };
  }
  return lag;
}

/**
 * PASS, ENGINE-FAILED or GENERATOR-BOUND, with the failed thresholds by kind.
 * A failed latency budget is `unjudged` when the probe's lag p99, in a phase
 * the budget covers (its {phase:…} tag, else every phase), exceeded lagLimit().
 */
export function verdictOf(metrics) {
  const lag = lagByPhase(metrics);
  const failed = { generator: [], latency: [], outcome: [], unjudged: [] };
  for (const [name, metric] of Object.entries(metrics)) {
    for (const [th, res] of Object.entries(metric.thresholds || {})) {
      const kind = thresholdKind(name, metric.type);
      if (res.ok || kind === "probe") continue;
      const failure = `${name}: ${th}`;
      if (kind === "latency") {
        const budget = Number((/<=?\s*([\d.]+)/.exec(th) || [])[1]);
        const tagged = /\{phase:(.+)\}$/.exec(name);
        const phases = tagged ? [tagged[1]] : Object.keys(lag);
        const over = phases.filter((p) => lag[p] && lag[p].p99 > lagLimit(budget));
        if (over.length > 0) {
          const lags = over.map((p) => `${fmt(lag[p].p99)} ms in ${p}`).join(", ");
          failed.unjudged.push(`${failure} failed with clock lag p99 ${lags} (limit ${fmt(lagLimit(budget))} ms)`);
          continue;
        }
      }
      failed[kind].push(failure);
    }
  }
  const generatorBound = failed.generator.length > 0 || failed.unjudged.length > 0;
  let result = "PASS";
  if (failed.outcome.length > 0) result = "ENGINE-FAILED";
  else if (generatorBound) result = "GENERATOR-BOUND";
  else if (failed.latency.length > 0) result = "ENGINE-FAILED";
  return { result, generator_bound: generatorBound, failed, lag_ms: lag };
}

// ---------------------------------------------------------------- summary

function fmt(v) {
  return v === undefined || v === null ? "-" : typeof v === "number" ? (Math.round(v * 100) / 100).toString() : String(v);
}

/** The generator's figures: arrivals scheduled and dropped, VUs. */
function generatorFigures(metrics, arrivals) {
  return {
    arrivals,
    dropped: metrics.dropped_iterations ? metrics.dropped_iterations.values.count : 0,
    vus_max: metrics.vus_max ? metrics.vus_max.values.max : undefined,
  };
}

/**
 * handleSummary body shared by the suites: JSON file + compact stdout ending
 * in the verdict. `arrivals`: what the suite's arrival-rate scenarios
 * schedule, as given to generatorThresholds (the whole test's, in a
 * distributed run; the dropped count is this instance's).
 */
export function summarize(suite, data, arrivals = 0) {
  const ts = __ENV.RESULTS_TS || new Date().toISOString().replace(/[:.]/g, "-");
  const file = __ENV.SUMMARY_FILE || `${RESULTS_DIR}/${suite}-${ts}.json`;
  const metrics = data.metrics;
  const urls = [...new Set([AUTH_URL, STOCK_URL, ORDER_URL])].join(", ");
  const lines = [`\n== ${suite} (run ${RUN_ID}) against ${urls}`];
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
    `  http_reqs=${count("http_reqs")} (${fmt(rate("http_reqs"))}/s) unexpected_errors=${fmt(rate("unexpected_errors"))} shed=${fmt(rate("shed"))} http_req_failed=${fmt(rate("http_req_failed"))}`
  );
  const gen = generatorFigures(metrics, arrivals);
  const verdict = verdictOf(metrics);
  const lagText = Object.entries(verdict.lag_ms)
    .map(([phase, l]) => `${phase} p99 ${fmt(l.p99)} ms (max ${fmt(l.max)})`)
    .join(", ");
  const offered = gen.arrivals > 0 ? `dropped ${gen.dropped} of ${gen.arrivals} arrivals` : "closed model, no arrivals to drop";
  lines.push(`  generator: cores ${GEN_CORES || "unset"}, VUs ${fmt(gen.vus_max)}, ${offered}; clock lag ${lagText || "not probed"}`);
  for (const [name, metric] of Object.entries(metrics)) {
    if (name.startsWith("generator_lag")) continue; // its `max>=0` only keeps the phase apart
    for (const [th, res] of Object.entries(metric.thresholds || {})) {
      lines.push(`  threshold ${res.ok ? "ok  " : "FAIL"} ${name}: ${th}`);
    }
  }
  const { failed } = verdict;
  if (verdict.generator_bound) {
    // A closed-model suite (spike) schedules no arrivals: it can only run late.
    const why = gen.arrivals > 0 ? [`dropped ${gen.dropped} of ${gen.arrivals} arrivals`] : [];
    if (failed.generator.length > 0) why[0] += " (no free VU: raise VUS or lower RATE)";
    if (failed.unjudged.length > 0) why.push(`ran late: ${failed.unjudged.join("; ")}`);
    lines.push(`  GENERATOR-BOUND: the load generator ${why.join(" and ")}; latency thresholds say nothing about the engine`);
  }
  if (verdict.result === "PASS") {
    // Lateness that did not break a budget only made the figures worse.
    const worst = Math.max(0, ...Object.values(verdict.lag_ms).map((l) => l.p99 || 0));
    lines.push(`  verdict: PASS: every arrival offered and every threshold held (clock lag p99 up to ${fmt(worst)} ms, inside the figures)`);
  } else if (verdict.result === "GENERATOR-BOUND") {
    lines.push("  verdict: GENERATOR-BOUND: no verdict on latency; outcome thresholds held");
  } else {
    const engine = failed.outcome.concat(verdict.generator_bound ? [] : failed.latency);
    lines.push(`  verdict: ENGINE-FAILED: ${engine.join("; ")}`);
  }
  lines.push(`  summary: ${file}`);
  const out = {
    suite,
    run_id: RUN_ID,
    urls: { base: BASE_URL, auth: AUTH_URL, stock: STOCK_URL, order: ORDER_URL },
    finished_at: new Date().toISOString(),
    sales: (data.setup_data && data.setup_data.sales) || [],
    // Sales that must end sold out with exactly stock_total sold (audit --expect-sold-out).
    expect_sold_out: (data.setup_data && data.setup_data.expect_sold_out) || [],
    verdict,
    generator: { cores: GEN_CORES || null, ...gen },
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
