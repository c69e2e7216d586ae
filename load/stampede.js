// Stampede: BUYERS (10,000) buyers with pre-made tokens hit ONE sale of STOCK
// (1,000) units, arrival-rate driven: RATE arrivals/s, so the crowd arrives
// within BUYERS / RATE seconds; then LATE_RATE late buyers/s keep knocking on
// the sold-out sale for LATE_SECONDS.
//
//   node load/mint-tokens.mjs --count 10000 --out load/results/tokens.json
//   k6 run -e TOKENS_FILE=../load/results/tokens.json load/stampede.js   (or: load/run.sh stampede)
//
// RATE is what the generator can offer without dropping arrivals or running
// late, not the 10,000/s a real launch sees: RATE_PER_CORE (500) per core of
// GEN_CORES (run.sh: nproc), at most 10,000/s; with GEN_CORES unset, 10,000/s
// (the full shape, e.g. for a cluster of generators: load/README.md). So on
// 2 cores the 10,000 buyers arrive over 10 s, on 20 cores within 1 s.
// VUS (pre-allocated, default STOCK + RATE / 2): every unit's buyer may wait
// on the ledger at once, plus half a second of arrivals answered sold out.
//
// Env: BASE_URL (or ORDER_URL and STOCK_URL), ADMIN_TOKEN, TOKENS_FILE (path relative to this script or
// absolute), BUYERS, STOCK, RATE, RATE_PER_CORE, VUS, RETRY_FOR, SALE_ID,
// LATE_RATE (200), LATE_SECONDS (15), LATE_DELAY (40), and the threshold knobs below.
// Each buyer sends ONE checkout (Idempotency-Key stampede-<i>); a 503 is
// retried with the same key for up to RETRY_FOR (35) s, honouring Retry-After. The sale must end with exactly
// STOCK units sold: the audit (load/audit.py --expect-sold-out) checks it.
import { SharedArray } from "k6/data";
import exec from "k6/execution";
import http from "k6/http";
import {
  ORDER_URL,
  RUN_ID,
  TREND_STATS,
  byCores,
  checkout,
  createSale,
  envInt,
  envStr,
  generatorThresholds,
  probeScenario,
  summarize,
} from "./lib.js";

export { generatorProbe } from "./lib.js";

const BUYERS = envInt("BUYERS", 10000);
const STOCK = envInt("STOCK", 1000);
const RATE = envInt("RATE", byCores(envInt("RATE_PER_CORE", 500), 10000, 10000));
const VUS = envInt("VUS", Math.min(BUYERS, STOCK + Math.ceil(RATE / 2)));
// A 503 (ledger time-out: outcome unknown) is retried with the same key for
// this long, so every buyer learns whether they got a unit: hold TTL (15 s)
// + the sweep that resolves lapsed holds + margin.
const RETRY_FOR = envInt("RETRY_FOR", 35);
const LATE_RATE = envInt("LATE_RATE", 200);
// Long enough for a p99 of thousands of answers: over 5 s (1,000 answers) a
// single stall of the machine decided the late phase's 5 ms budget.
const LATE_SECONDS = envInt("LATE_SECONDS", 15);
const LATE_DELAY = envInt("LATE_DELAY", 40); // s after the stampede's arrivals end
// BUYERS arrivals, evenly spread over the window.
const WINDOW_MS = Math.max(1, Math.ceil((BUYERS * 1000) / RATE));
const LATE_START_S = Math.ceil(WINDOW_MS / 1000) + LATE_DELAY;
const ARRIVALS = BUYERS + LATE_RATE * LATE_SECONDS;

const tokens = new SharedArray("tokens", () => {
  const file = envStr("TOKENS_FILE", "./results/tokens.json");
  const all = JSON.parse(open(file)).tokens;
  if (all.length < BUYERS) throw new Error(`${file} has ${all.length} tokens, BUYERS=${BUYERS}: mint more`);
  return all.slice(0, BUYERS).map((t) => t.token);
});

// Targets. Checkout (201) latency during the crowd's arrival is queueing-bound
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
      rate: BUYERS,
      timeUnit: `${WINDOW_MS}ms`,
      duration: `${WINDOW_MS}ms`,
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
      startTime: `${LATE_START_S}s`,
      preAllocatedVUs: 50,
      maxVUs: 200,
      exec: "lateBuyer",
      tags: { phase: "late" },
    },
    // The generator's clock, while the crowd arrives (and the first answers
    // come back) and while the late buyers knock.
    probe_burst: probeScenario("burst", `${WINDOW_MS + 5000}ms`),
    probe_late: probeScenario("late", `${LATE_SECONDS}s`, `${LATE_START_S}s`),
  },
  thresholds: {
    unexpected_errors: [`rate<${MAX_ERROR_RATE}`],
    checkout_created: [`p(99)<${P99_CREATED_MS}`],
    checkout_sold_out: [`p(99)<${P99_SOLD_OUT_MS}`],
    "checkout_sold_out{phase:late}": [`p(99)<${P99_LATE_SOLD_OUT_MS}`],
    // Never more orders than units (the audit checks the ledger too).
    orders_created: [`count<=${STOCK}`],
    replay_mismatch: ["count==0"],
    ...generatorThresholds(["burst", "late"], ARRIVALS),
  },
};

export function setup() {
  // A given SALE_ID may exist already: every runner of a distributed run
  // (k6-operator runs setup() in each) creates the same sale, one of them first.
  const given = envStr("SALE_ID", "");
  const saleId = given || `stampede-${RUN_ID}`;
  createSale(saleId, STOCK, 1, "stampede", given !== "");
  // Fail fast if the tokens were minted with another key than the stack's.
  const probe = http.get(`${ORDER_URL}/orders?sale_id=${saleId}`, { headers: { Authorization: `Bearer ${tokens[0]}` } });
  if (probe.status !== 200) {
    throw new Error(`a minted token is refused (${probe.status} ${probe.body}): TOKEN_SIGNING_KEY differs from the stack's key`);
  }
  return { sales: [saleId], expect_sold_out: BUYERS >= STOCK ? [saleId] : [], saleId, started: Date.now() };
}

export function buyer(data) {
  const i = exec.scenario.iterationInTest;
  // k6 schedules an arrival at both ends of the window: BUYERS + 1 in all.
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
  return summarize("stampede", data, ARRIVALS);
}
