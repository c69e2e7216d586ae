// Waiting room (contract v1.1, issue 14): BUYERS buyers with pre-made tokens
// join ONE waiting-room sale at the same instant, poll their ticket honouring
// Retry-After, and check out (Admission-Token) the moment they are admitted.
//
//   load/run.sh waiting_room            (or: just load waiting_room)
//   k6 run -e TOKENS_FILE=../load/results/tokens.json load/waiting_room.js
//
// Sizes: the full shape is 10,000 buyers at ADMIT_RATE 250/s (the engine's
// default admission rate) for STOCK = BUYERS / 4 units. Every buyer is a VU
// that lives until it is served or told sold out, so the generator's cores
// bound the crowd: BUYERS_PER_CORE (1,000) per core of GEN_CORES (run.sh:
// nproc), at most 10,000, and ADMIT_RATE 25/s per core, at most 250/s; on
// the 2-core box that is 2,000 buyers at 50/s for 500 units: the same
// sell-out time (10 s) and the same crowd per admission (40 s of line).
//
// Checks (thresholds, all outcome thresholds: the engine's doing):
//   * the room never admits more buyers in any one-second window than the
//     admission rate plus the bucket's fifth of a second (1.2 x ADMIT_RATE
//     + 1), by the
//     room's clock (every ticket's expires_at - ADMISSION_TTL, read in
//     teardown by joining again), and the order function never confirms more
//     checkouts than that in any one-second window (the sale's orders'
//     created_at): the second also carries how the admitted learn of it;
//   * nobody checks out without admission: INTRUDERS deliberate attempts
//     (no Admission-Token, a forged one, an access token in its place) all
//     get 403 admission_required; an admitted buyer is never refused;
//   * nobody twice: every SECOND_BUY_EVERY-th buyer tries a second unit with
//     its admission and a new key: 409 limit_reached (and the audit checks
//     per_user_limit over every order);
//   * one ticket per user: every REJOIN_EVERY-th buyer joins again and must
//     get 200 and the same ticket;
//   * the queue closes at sold-out: every buyer ends bought, told sold_out,
//     or (the ABANDON share, who never check out) expired; and the last
//     waiting buyer learns sold_out within POLL_BOUND_S (7: the longest
//     Retry-After, 5 s, with this suite's 20 % jitter, plus a second) of the
//     last unit's order;
//   * the audit (load/audit.py --expect-sold-out): never oversold, per-user
//     limit, guarantee 5, exactly STOCK sold.
// Reported (summary, stdout): admission rate measured vs configured, the
// wait-estimate error (estimated_wait_seconds at join vs the actual wait),
// the time from the sell-out to every waiting buyer knowing it.
//
// Env: BASE_URL (or STOCK_URL and ORDER_URL), ADMIN_TOKEN, TOKENS_FILE, BUYERS,
// BUYERS_PER_CORE, ADMIT_RATE, STOCK, ADMISSION_TTL (s, 10), ABANDON (share,
// 0.02), INTRUDERS (30), SECOND_BUY_EVERY (10), REJOIN_EVERY (20),
// POLL_BOUND_S (6), MAX_WAIT_S (line limit per buyer, 300), SALE_ID.
import { SharedArray } from "k6/data";
import exec from "k6/execution";
import http from "k6/http";
import { check, sleep } from "k6";
import { Counter, Gauge, Trend } from "k6/metrics";
import {
  ORDER_URL,
  RUN_ID,
  STOCK_URL,
  TREND_STATS,
  adminHeaders,
  byCores,
  envInt,
  envStr,
  generatorThresholds,
  m,
  probeScenario,
  summarize,
} from "./lib.js";

export { generatorProbe } from "./lib.js";

const BUYERS = envInt("BUYERS", byCores(envInt("BUYERS_PER_CORE", 1000), 10000, 10000));
const ADMIT_RATE = envInt("ADMIT_RATE", byCores(25, 250, 250));
// The room's bucket holds a fifth of a second (room.lua): its most in 1 s.
const ADMISSIONS_BOUND = Math.ceil(1.2 * ADMIT_RATE) + 1;
const ORDERS_BOUND = Math.ceil(1.5 * ADMIT_RATE);
const STOCK = envInt("STOCK", Math.max(1, Math.floor(BUYERS / 4)));
const ADMISSION_TTL = envInt("ADMISSION_TTL", 10);
const ABANDON = Number(envStr("ABANDON", "0.02"));
const INTRUDERS = envInt("INTRUDERS", 30);
const SECOND_BUY_EVERY = envInt("SECOND_BUY_EVERY", 10);
const REJOIN_EVERY = envInt("REJOIN_EVERY", 20);
// The longest Retry-After (5 s) with this suite's jitter (+20 %), plus a second for the answer.
const POLL_BOUND_S = envInt("POLL_BOUND_S", 7);
const MAX_WAIT_S = envInt("MAX_WAIT_S", 300);
const ABANDON_EVERY = ABANDON > 0 ? Math.max(2, Math.round(1 / ABANDON)) : 0;

const tokens = new SharedArray("tokens", () => {
  const file = envStr("TOKENS_FILE", "./results/tokens.json");
  const all = JSON.parse(open(file)).tokens;
  if (all.length < BUYERS + INTRUDERS) throw new Error(`${file} has ${all.length} tokens, BUYERS + INTRUDERS = ${BUYERS + INTRUDERS}: mint more`);
  return all.slice(0, BUYERS + INTRUDERS).map((t) => t.token);
});

const wr = {
  joined: new Counter("wr_joined"),
  admitted: new Counter("wr_admitted"),
  bought: new Counter("wr_bought"),
  toldSoldOut: new Counter("wr_told_sold_out"),
  expired: new Counter("wr_expired"), // abandoned admissions that lapsed, as meant
  neverTold: new Counter("wr_never_told"), // still waiting at MAX_WAIT_S, or an answer the contract does not allow
  admittedRefused: new Counter("wr_admitted_refused"), // an admitted buyer's checkout got 403
  unexpectedExpiry: new Counter("wr_unexpected_expiry"), // expired though it meant to buy
  bypass: new Counter("wr_checkout_without_admission"), // an intruder's checkout not refused with 403
  intruderRefused: new Counter("wr_intruder_refused"),
  secondUnit: new Counter("wr_second_unit"), // a second checkout that got a unit
  ticketMismatch: new Counter("wr_ticket_mismatch"),
  polls: new Counter("wr_polls"),
  poll: new Trend("wr_poll", true),
  join: new Trend("wr_join", true),
  wait: new Trend("wr_admission_wait_s"), // join to admitted, seconds
  waitError: new Trend("wr_wait_estimate_error_s"), // actual - estimated, seconds
  waitAbsError: new Trend("wr_wait_estimate_abs_error_s"),
  learnedAt: new Trend("wr_sold_out_learned_at_ms"), // epoch ms at which a buyer learned sold_out
  // Written by teardown from the sale's orders.
  maxPerWindow: new Gauge("wr_orders_max_per_1s"),
  admissionsMaxPerWindow: new Gauge("wr_admissions_max_per_1s"),
  admissionsRate: new Gauge("wr_admissions_per_s_measured"),
  admissionsTotal: new Gauge("wr_admissions_total"),
  measuredRate: new Gauge("wr_orders_per_s_measured"),
  soldOutAt: new Gauge("wr_sold_out_at_ms"),
  orders: new Gauge("wr_orders_total"),
};

export const options = {
  summaryTrendStats: TREND_STATS,
  setupTimeout: "60s",
  teardownTimeout: "60s",
  scenarios: {
    crowd: {
      executor: "per-vu-iterations",
      vus: BUYERS,
      iterations: 1,
      maxDuration: `${MAX_WAIT_S + 60}s`,
      exec: "buyer",
      gracefulStop: "30s",
    },
    intruders: {
      executor: "per-vu-iterations",
      vus: 1,
      iterations: 1,
      exec: "intruder",
      maxDuration: "60s",
    },
    probe_crowd: probeScenario("crowd", `${Math.ceil(STOCK / ADMIT_RATE) + 20}s`),
  },
  thresholds: {
    // Orders follow admissions by each buyer's own poll and checkout, so
    // they may bunch a little more than the admissions do.
    wr_orders_max_per_1s: [`value<=${ORDERS_BOUND}`],
    wr_admissions_max_per_1s: [`value<=${ADMISSIONS_BOUND}`],
    wr_checkout_without_admission: ["count==0"],
    wr_intruder_refused: [`count==${3 * INTRUDERS}`],
    wr_admitted_refused: ["count==0"],
    wr_unexpected_expiry: ["count==0"],
    wr_second_unit: ["count==0"],
    wr_ticket_mismatch: ["count==0"],
    wr_never_told: ["count==0"],
    wr_orders_total: [`value<=${STOCK}`],
    ...generatorThresholds(["crowd"], 0),
  },
};

const JSON_HEADERS = { "Content-Type": "application/json" };
const code = (res) => {
  try {
    return res.json().error.code;
  } catch (_) {
    return null;
  }
};
const retryAfter = (res, dflt) => {
  const v = parseFloat(res.headers["Retry-After"]);
  return Number.isFinite(v) ? v : dflt;
};

export function setup() {
  const saleId = envStr("SALE_ID", `wroom-${RUN_ID}`);
  const body = {
    sale_id: saleId,
    name: `waiting room ${saleId}`,
    stock: STOCK,
    per_user_limit: 1,
    waiting_room: { admit_per_second: ADMIT_RATE, admission_ttl_seconds: ADMISSION_TTL },
  };
  const res = http.post(`${STOCK_URL}/stock/sales`, JSON.stringify(body), { headers: adminHeaders() });
  if (res.status !== 201) throw new Error(`creating ${saleId}: ${res.status} ${res.body} (does stock have ADMISSION_SIGNING_KEY?)`);
  // Fail fast if the tokens were minted with another key than the stack's.
  const probe = http.get(`${ORDER_URL}/orders?sale_id=${saleId}`, { headers: { Authorization: `Bearer ${tokens[0]}` } });
  if (probe.status !== 200) throw new Error(`a minted token is refused (${probe.status} ${probe.body}): TOKEN_SIGNING_KEY differs`);
  console.log(`waiting_room: ${BUYERS} buyers, ${STOCK} units, ${ADMIT_RATE} admissions/s, admission TTL ${ADMISSION_TTL} s, ABANDON ${ABANDON} (GEN_CORES ${__ENV.GEN_CORES || "unset"})`);
  return { sales: [saleId], expect_sold_out: [saleId], saleId };
}

function auth(token) {
  return { ...JSON_HEADERS, Authorization: `Bearer ${token}` };
}

/** POST .../queue until it answers (503 is retried after Retry-After). */
function join(saleId, token) {
  for (let i = 0; i < 10; i++) {
    const res = http.post(`${STOCK_URL}/stock/sales/${saleId}/queue`, null, { headers: auth(token), tags: { name: "wr_join" } });
    wr.join.add(res.timings.duration);
    if (res.status === 503 || res.status === 429) {
      m.shed.add(true, { call: "wr_join" });
      sleep(retryAfter(res, 1) * (1 + Math.random() * 0.2));
      continue;
    }
    return res;
  }
  return null;
}

function checkout(saleId, token, admission, key) {
  const headers = { ...auth(token), "Idempotency-Key": key };
  if (admission !== null) headers["Admission-Token"] = admission;
  for (let i = 0; i < 10; i++) {
    const res = http.post(`${ORDER_URL}/orders`, JSON.stringify({ sale_id: saleId }), { headers, tags: { name: "wr_checkout" } });
    m.checkoutAll.add(res.timings.duration);
    if (res.status === 503) {
      m.shed.add(true, { call: "checkout" });
      sleep(retryAfter(res, 1) * (1 + Math.random() * 0.2));
      continue;
    }
    return res;
  }
  return null;
}

export function buyer(data) {
  const i = exec.scenario.iterationInTest; // 0 .. BUYERS - 1, one per VU
  const token = tokens[i];
  const saleId = data.saleId;
  const abandons = ABANDON_EVERY > 0 && i % ABANDON_EVERY === ABANDON_EVERY - 1;
  const t0 = Date.now();
  let res = join(saleId, token);
  if (!res) return void wr.neverTold.add(1, { why: "join_shed" });
  if (res.status === 409 && code(res) === "sold_out") {
    wr.toldSoldOut.add(1);
    wr.learnedAt.add(Date.now());
    return;
  }
  if (res.status !== 201) {
    wr.neverTold.add(1, { why: "join_answer" });
    check(res, { "join 201": () => false });
    return;
  }
  wr.joined.add(1);
  let body = res.json();
  const ticket = body.ticket;
  const estimate = body.status === "waiting" ? body.estimated_wait_seconds : 0;
  if (REJOIN_EVERY > 0 && i % REJOIN_EVERY === 0) {
    const again = join(saleId, token);
    const same = again && again.status === 200 && again.json().ticket === ticket;
    if (!same) wr.ticketMismatch.add(1);
    check(again, { "rejoin: 200, same ticket": () => same });
  }
  const deadline = t0 + MAX_WAIT_S * 1000;
  while (body.status === "waiting") {
    if (Date.now() > deadline) return void wr.neverTold.add(1, { why: "still_waiting" });
    // Honour Retry-After, with a little jitter so the crowd does not poll in lockstep.
    sleep(retryAfter(res, 1) * (1 + Math.random() * 0.2));
    res = http.get(`${STOCK_URL}/stock/sales/${saleId}/queue/${ticket}`, { headers: auth(token), tags: { name: "wr_poll" } });
    wr.polls.add(1);
    wr.poll.add(res.timings.duration);
    if (res.status === 503 || res.status === 429) {
      m.shed.add(true, { call: "wr_poll" });
      body = { status: "waiting" };
      continue;
    }
    if (res.status !== 200) {
      wr.neverTold.add(1, { why: `poll_${res.status}` });
      return;
    }
    body = res.json();
  }
  if (body.status === "sold_out") {
    wr.toldSoldOut.add(1);
    wr.learnedAt.add(Date.now());
    return;
  }
  if (body.status === "expired") {
    // Only an abandoning buyer stops polling while admitted; the others check out at once.
    wr.unexpectedExpiry.add(1);
    return;
  }
  if (body.status !== "admitted" || !body.admission_token) {
    wr.neverTold.add(1, { why: `status_${body.status}` });
    return;
  }
  wr.admitted.add(1);
  const waited = (Date.now() - t0) / 1000;
  wr.wait.add(waited);
  wr.waitError.add(waited - estimate);
  wr.waitAbsError.add(Math.abs(waited - estimate));
  if (abandons) {
    // Never checks out: the admission must lapse and free its place.
    sleep(ADMISSION_TTL + 1);
    const after = http.get(`${STOCK_URL}/stock/sales/${saleId}/queue/${ticket}`, { headers: auth(token), tags: { name: "wr_poll" } });
    const st = after.status === 200 ? after.json().status : `http_${after.status}`;
    if (st === "expired") wr.expired.add(1);
    else wr.unexpectedExpiry.add(1, { why: `abandoned_${st}` });
    return;
  }
  const out = checkout(saleId, token, body.admission_token, `wr-${RUN_ID}-${i}`);
  if (out && out.status === 201) {
    wr.bought.add(1);
    m.ordersCreated.add(1);
  } else if (out && out.status === 409 && code(out) === "sold_out") {
    // Admitted as the last units went to others' checkouts: told, as the room must.
    wr.toldSoldOut.add(1);
    wr.learnedAt.add(Date.now());
    return;
  } else if (out && out.status === 403) {
    wr.admittedRefused.add(1);
    return;
  } else {
    wr.neverTold.add(1, { why: `checkout_${out ? out.status : "shed"}` });
    return;
  }
  if (SECOND_BUY_EVERY > 0 && i % SECOND_BUY_EVERY === 0) {
    const twice = checkout(saleId, token, body.admission_token, `wr-${RUN_ID}-${i}-again`);
    const refused = twice && twice.status === 409 && code(twice) === "limit_reached";
    if (twice && (twice.status === 201 || twice.status === 200)) wr.secondUnit.add(1);
    check(twice, { "second unit: 409 limit_reached": () => refused });
  }
}

/** Checkouts with no admission at all, a forged one, and an access token passed as one: all 403 admission_required. */
export function intruder(data) {
  const forged = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.AAAA";
  const spread = Math.max(1, Math.ceil(STOCK / ADMIT_RATE));
  for (let n = 0; n < INTRUDERS; n++) {
    const token = tokens[BUYERS + n];
    for (const admission of [null, forged, token]) {
      const res = checkout(data.saleId, token, admission, `wr-intruder-${RUN_ID}-${n}-${admission === null ? "none" : admission.length}`);
      if (res && res.status === 403 && code(res) === "admission_required") wr.intruderRefused.add(1);
      else if (res && (res.status === 201 || res.status === 200)) wr.bypass.add(1);
      check(res, { "no admission: 403 admission_required": () => res && res.status === 403 && code(res) === "admission_required" });
    }
    sleep(spread / INTRUDERS); // spread over the sell-out
  }
}

/** The most of `times` (sorted, ms) in any window [t, t + 1 s). */
function maxInOneSecond(times) {
  let best = 0;
  for (let a = 0, b = 0; a < times.length; a++) {
    while (b < times.length && times[b] < times[a] + 1000) b++;
    best = Math.max(best, b - a);
  }
  return best;
}

/** Rate from the first to the 95th-percentile of `times` (sorted, ms): the tail waits on abandoned admissions. */
function bodyRate(times) {
  const p95 = Math.floor((times.length - 1) * 0.95);
  return p95 > 0 ? (p95 * 1000) / Math.max(1, times[p95] - times[0]) : undefined;
}

export function teardown(data) {
  // When every admission was granted, by the room's clock: each buyer joins
  // again (200, the same ticket), and an admitted or expired ticket's
  // expires_at is its admission + ADMISSION_TTL.
  const admittedAt = [];
  for (let from = 0; from < BUYERS; from += 100) {
    const batch = [];
    for (let i = from; i < Math.min(BUYERS, from + 100); i++) {
      batch.push(["POST", `${STOCK_URL}/stock/sales/${data.saleId}/queue`, null, { headers: auth(tokens[i]), tags: { name: "wr_teardown_rejoin" } }]);
    }
    for (const res of http.batch(batch)) {
      if (res.status !== 200) continue;
      const b = res.json();
      if ((b.status === "admitted" || b.status === "expired") && b.expires_at) admittedAt.push(Date.parse(b.expires_at) - ADMISSION_TTL * 1000);
    }
  }
  admittedAt.sort((a, b) => a - b);
  wr.admissionsTotal.add(admittedAt.length);
  if (admittedAt.length > 0) wr.admissionsMaxPerWindow.add(maxInOneSecond(admittedAt));
  const admRate = bodyRate(admittedAt);
  if (admRate !== undefined) wr.admissionsRate.add(admRate);

  // Every confirmed order of the sale, by its confirmation time.
  const res = http.get(`${STOCK_URL}/stock/sales/${data.saleId}/orders`, { headers: adminHeaders() });
  if (res.status !== 200) {
    console.error(`teardown: orders of ${data.saleId}: ${res.status} ${res.body}`);
    return;
  }
  const times = res
    .json()
    .orders.map((o) => Date.parse(o.created_at))
    .sort((a, b) => a - b);
  wr.orders.add(times.length);
  if (times.length === 0) return;
  // What the order function let through: orders confirmed in any one-second window.
  wr.maxPerWindow.add(maxInOneSecond(times));
  const rate = bodyRate(times);
  if (rate !== undefined) wr.measuredRate.add(rate);
  if (times.length >= STOCK) wr.soldOutAt.add(times[times.length - 1]);
}

function val(metrics, name, stat) {
  return metrics[name] && metrics[name].values ? metrics[name].values[stat] : undefined;
}

export function handleSummary(data) {
  const metrics = data.metrics;
  const soldOutAt = val(metrics, "wr_sold_out_at_ms", "value");
  const lastLearned = val(metrics, "wr_sold_out_learned_at_ms", "max");
  const told = val(metrics, "wr_told_sold_out", "count") || 0;
  // The time from the last unit's order to the last waiting buyer knowing,
  // judged here (it needs teardown's figure and every buyer's): a gauge with
  // one threshold, in the form verdictOf() reads.
  const knownLag = soldOutAt !== undefined && lastLearned !== undefined ? (lastLearned - soldOutAt) / 1000 : undefined;
  const knownOk = told === 0 || (knownLag !== undefined && knownLag <= POLL_BOUND_S);
  metrics.wr_sold_out_known_after_s = {
    type: "gauge",
    contains: "default",
    values: { value: knownLag === undefined ? -1 : knownLag },
    thresholds: { [`value<=${POLL_BOUND_S}`]: { ok: knownOk } },
  };
  const figures = {
    buyers: BUYERS,
    stock: STOCK,
    admit_per_second_configured: ADMIT_RATE,
    admission_ttl_seconds: ADMISSION_TTL,
    orders: val(metrics, "wr_orders_total", "value"),
    orders_per_second_measured: val(metrics, "wr_orders_per_s_measured", "value"),
    orders_max_in_1s_window: val(metrics, "wr_orders_max_per_1s", "value"),
    admissions: val(metrics, "wr_admissions_total", "value"),
    admissions_per_second_measured: val(metrics, "wr_admissions_per_s_measured", "value"),
    admissions_max_in_1s_window: val(metrics, "wr_admissions_max_per_1s", "value"),
    admitted: val(metrics, "wr_admitted", "count"),
    bought: val(metrics, "wr_bought", "count"),
    told_sold_out: told,
    abandoned_expired: val(metrics, "wr_expired", "count") || 0,
    polls: val(metrics, "wr_polls", "count"),
    wait_estimate_error_s: {
      mean: val(metrics, "wr_wait_estimate_error_s", "avg"),
      p50_abs: val(metrics, "wr_wait_estimate_abs_error_s", "med"),
      p95_abs: val(metrics, "wr_wait_estimate_abs_error_s", "p(95)"),
      max_abs: val(metrics, "wr_wait_estimate_abs_error_s", "max"),
    },
    admission_wait_s: { p50: val(metrics, "wr_admission_wait_s", "med"), max: val(metrics, "wr_admission_wait_s", "max") },
    sold_out_to_all_told_s: knownLag,
    poll_bound_s: POLL_BOUND_S,
  };
  const out = summarize("waiting_room", data, 0);
  const r = (v) => (v === undefined || v === null ? "-" : Math.round(v * 100) / 100);
  const lines = [
    `  waiting room: ${BUYERS} buyers, ${STOCK} units, admission ${ADMIT_RATE}/s configured (at most ${ADMISSIONS_BOUND} admitted and ${ORDERS_BOUND} ordered in any 1 s: the rate + the bucket's fifth of a second)`,
    `  admissions ${r(figures.admissions)} (by the room's clock): ${r(figures.admissions_per_second_measured)}/s (first to 95th percentile), at most ${r(figures.admissions_max_in_1s_window)} in any 1 s`,
    `  orders ${r(figures.orders)} (confirmed, at the order function): ${r(figures.orders_per_second_measured)}/s (first to 95th percentile), at most ${r(figures.orders_max_in_1s_window)} in any 1 s`,
    `  wait estimate error (actual - estimated at join): mean ${r(figures.wait_estimate_error_s.mean)} s, |err| p50 ${r(figures.wait_estimate_error_s.p50_abs)} p95 ${r(figures.wait_estimate_error_s.p95_abs)} max ${r(figures.wait_estimate_error_s.max_abs)} s; admitted after p50 ${r(figures.admission_wait_s.p50)} s, max ${r(figures.admission_wait_s.max)} s`,
    `  sold out -> every waiting buyer told: ${r(knownLag)} s after the last order (${told} told; bound ${POLL_BOUND_S} s); abandoned admissions expired: ${figures.abandoned_expired}`,
  ];
  const file = Object.keys(out).find((k) => k !== "stdout");
  const json = JSON.parse(out[file]);
  json.waiting_room = figures;
  out[file] = JSON.stringify(json, null, 2);
  out.stdout = out.stdout.replace(/(\n {2}verdict:)/, `\n${lines.join("\n")}$1`);
  return out;
}
