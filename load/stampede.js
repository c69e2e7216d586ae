// Stampede: BUYERS (10,000) buyers with pre-made tokens hit ONE sale of STOCK
// (1,000) units at the same instant, arrival-rate driven (RATE arrivals/s,
// default 10,000/s, so the whole crowd arrives within ~1 s), then LATE_RATE
// late buyers/s keep knocking on the sold-out sale for LATE_SECONDS.
//
//   node load/mint-tokens.mjs --count 10000 --out load/results/tokens.json
//   k6 run -e TOKENS_FILE=../load/results/tokens.json load/stampede.js   (or: load/run.sh stampede)
//
// Env: BASE_URL, ADMIN_TOKEN, TOKENS_FILE (path relative to this script or
// absolute), BUYERS, STOCK, RATE, VUS (pre-allocated VUs, default 4000), RETRY_FOR,
// LATE_RATE (200), LATE_SECONDS (5), LATE_DELAY (40), and the threshold knobs below.
// Each buyer sends ONE checkout (Idempotency-Key stampede-<i>); a 503 is
// retried with the same key for up to RETRY_FOR (35) s, honouring Retry-After. The sale must end with exactly
// STOCK units sold: the audit (load/audit.py --expect-sold-out) checks it.
import { SharedArray } from "k6/data";
import exec from "k6/execution";
import http from "k6/http";
import { BASE_URL, RUN_ID, TREND_STATS, checkout, createSale, envInt, envStr, m, summarize } from "./lib.js";

const BUYERS = envInt("BUYERS", 10000);
const STOCK = envInt("STOCK", 1000);
const RATE = envInt("RATE", 10000);
const VUS = envInt("VUS", 4000);
// A 503 (ledger time-out: outcome unknown) is retried with the same key for
// this long, so every buyer learns whether they got a unit: hold TTL (15 s)
// + the sweep that resolves lapsed holds + margin.
const RETRY_FOR = envInt("RETRY_FOR", 35);
const LATE_RATE = envInt("LATE_RATE", 200);
const LATE_SECONDS = envInt("LATE_SECONDS", 5);
const LATE_DELAY = envInt("LATE_DELAY", 40); // s after the stampede's arrivals end
const STAMPEDE_SECONDS = Math.max(1, Math.ceil(BUYERS / RATE));

const tokens = new SharedArray("tokens", () => {
  const file = envStr("TOKENS_FILE", "./results/tokens.json");
  const all = JSON.parse(open(file)).tokens;
  if (all.length < BUYERS) throw new Error(`${file} has ${all.length} tokens, BUYERS=${BUYERS}: mint more`);
  return all.slice(0, BUYERS).map((t) => t.token);
});

// Targets. Checkout (201) latency during a 10k-in-1s burst is queueing-bound
// on any fixed capacity, so its budget here is the burst's, not the
// steady-state 20 ms; sold-out answers must stay cheap even in the burst.
const P99_CREATED_MS = envInt("P99_CREATED_MS", 1000);
const P99_SOLD_OUT_MS = envInt("P99_SOLD_OUT_MS", 500);
const P99_LATE_SOLD_OUT_MS = envInt("P99_LATE_SOLD_OUT_MS", 5);
const MAX_ERROR_RATE = Number(envStr("MAX_ERROR_RATE", "0.01"));

export const options = {
  summaryTrendStats: TREND_STATS,
  setupTimeout: "60s",
  scenarios: {
    stampede: {
      executor: "constant-arrival-rate",
      rate: RATE,
      timeUnit: "1s",
      duration: `${STAMPEDE_SECONDS}s`,
      preAllocatedVUs: VUS,
      maxVUs: VUS,
      exec: "buyer",
      gracefulStop: "45s",
    },
    late: {
      executor: "constant-arrival-rate",
      rate: LATE_RATE,
      timeUnit: "1s",
      duration: `${LATE_SECONDS}s`,
      startTime: `${STAMPEDE_SECONDS + LATE_DELAY}s`,
      preAllocatedVUs: 50,
      maxVUs: 200,
      exec: "lateBuyer",
      tags: { phase: "late" },
    },
  },
  thresholds: {
    unexpected_errors: [`rate<${MAX_ERROR_RATE}`],
    checkout_created: [`p(99)<${P99_CREATED_MS}`],
    checkout_sold_out: [`p(99)<${P99_SOLD_OUT_MS}`],
    "checkout_sold_out{phase:late}": [`p(99)<${P99_LATE_SOLD_OUT_MS}`],
    // Never more orders than units (the audit checks the ledger too).
    orders_created: [`count<=${STOCK}`],
    replay_mismatch: ["count==0"],
  },
};

export function setup() {
  const saleId = envStr("SALE_ID", `stampede-${RUN_ID}`);
  createSale(saleId, STOCK, 1, "stampede");
  // Fail fast if the tokens were minted with another key than the stack's.
  const probe = http.get(`${BASE_URL}/orders?sale_id=${saleId}`, { headers: { Authorization: `Bearer ${tokens[0]}` } });
  if (probe.status !== 200) {
    throw new Error(`a minted token is refused (${probe.status} ${probe.body}): TOKEN_SIGNING_KEY differs from the stack's key`);
  }
  return { sales: [saleId], expect_sold_out: BUYERS >= STOCK ? [saleId] : [], saleId, started: Date.now() };
}

export function buyer(data) {
  const i = exec.scenario.iterationInTest;
  if (i >= BUYERS) return;
  checkout(tokens[i], data.saleId, `stampede-${i}`, 3, RETRY_FOR);
}

export function lateBuyer(data) {
  const i = exec.scenario.iterationInTest % BUYERS;
  // A real buyer trying again after the crowd, half of them with a fresh
  // Idempotency-Key (which must ask the Redis gate: it could be a replay),
  // half without (answered from the order function's sold-out memory). The
  // sale is sold out by now: the answer must be 409 sold_out, and fast.
  const n = exec.scenario.iterationInTest;
  checkout(tokens[i], data.saleId, n % 2 ? `late-${n}` : null);
}

export function handleSummary(data) {
  return summarize("stampede", data);
}
