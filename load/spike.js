// Spike: the seed's scenario. Ramp to VUS virtual users in RAMP (30s),
// hold for DURATION (2m; CI uses e.g. DURATION=20s), ramp down in 10s.
// VUS defaults to VUS_PER_CORE (50) per core of GEN_CORES (run.sh: nproc),
// so 100 on 2 cores; with GEN_CORES unset, the seed's 200.
// Every VU is a person: it registers and logs in (argon2 on the auth
// function; a 503 overloaded is retried after Retry-After), then loops:
//   60 % read a sale's stock view
//   30 % check out (Idempotency-Key per attempt; 1 in 10 successes is replayed
//        with the same key and must return the very same order)
//    5 % log in again (token refresh), 5 % register a throwaway account
// with 0.5-1.5 s of think time. Two sales are created in setup(): "main"
// (STOCK_MAIN units, default 1.5 × VUS, limit 2, so the buyers can nearly empty it) and "small"
// (STOCK_SMALL units, default VUS/4, sells out in seconds: the sold-out path under load).
//
// Env: BASE_URL (or AUTH_URL, STOCK_URL, ORDER_URL), ADMIN_TOKEN, VUS, VUS_PER_CORE, RAMP, DURATION, STOCK_MAIN, STOCK_SMALL,
// and the threshold knobs below.
import { sleep } from "k6";
import exec from "k6/execution";
import {
  RUN_ID,
  TREND_STATS,
  byCores,
  checkout,
  createSale,
  envInt,
  envStr,
  generatorThresholds,
  login,
  probeScenario,
  register,
  seconds,
  stockView,
  summarize,
  verifyReplay,
} from "./lib.js";

export { generatorProbe } from "./lib.js";

const VUS = envInt("VUS", byCores(envInt("VUS_PER_CORE", 50), 200));
const RAMP = envStr("RAMP", "30s");
const DURATION = envStr("DURATION", "2m");
const STOCK_MAIN = envInt("STOCK_MAIN", Math.round(1.5 * VUS));
// A quarter of the buyers can get one unit each: it sells out for sure.
const STOCK_SMALL = envInt("STOCK_SMALL", Math.max(1, Math.floor(VUS / 4)));

// Targets (per-call p99 budgets; the per-function capacity behind them is in capacity.md).
const P99_CHECKOUT_MS = envInt("P99_CHECKOUT_MS", 20);
const P99_SOLD_OUT_MS = envInt("P99_SOLD_OUT_MS", 5);
const P99_STOCK_MS = envInt("P99_STOCK_MS", 10);
const P99_LOGIN_MS = envInt("P99_LOGIN_MS", 1000);
const MAX_ERROR_RATE = Number(envStr("MAX_ERROR_RATE", "0.01"));

export const options = {
  summaryTrendStats: TREND_STATS,
  setupTimeout: "60s",
  scenarios: {
    spike: {
      executor: "ramping-vus",
      startVUs: 0,
      stages: [
        { duration: RAMP, target: VUS },
        { duration: DURATION, target: VUS },
        { duration: "10s", target: 0 },
      ],
      gracefulRampDown: "10s",
    },
    probe: probeScenario("spike", `${seconds(RAMP) + seconds(DURATION) + 10}s`),
  },
  thresholds: {
    unexpected_errors: [`rate<${MAX_ERROR_RATE}`],
    checkout_created: [`p(99)<${P99_CHECKOUT_MS}`],
    checkout_sold_out: [`p(99)<${P99_SOLD_OUT_MS}`],
    stock_view: [`p(99)<${P99_STOCK_MS}`],
    auth_login: [`p(99)<${P99_LOGIN_MS}`],
    replay_mismatch: ["count==0"],
    // Closed model: VUs wait for answers, so nothing is dropped; k6 can only run late.
    ...generatorThresholds(["spike"], 0),
  },
};

export function setup() {
  const main = `spike-${RUN_ID}-main`;
  const small = `spike-${RUN_ID}-small`;
  createSale(main, STOCK_MAIN, 2, "spike main");
  createSale(small, STOCK_SMALL, 1, "spike small");
  // The small sale sells out within seconds of the first checkouts.
  return { sales: [main, small], expect_sold_out: seconds(DURATION) >= 15 && VUS >= 2 * STOCK_SMALL ? [small] : [], main, small };
}

// Per-VU state (each VU is its own JS runtime).
let me = null;
let attempt = 0;

function onboard() {
  const vu = exec.vu.idInTest;
  const username = `sp-${RUN_ID}-${vu}`.toLowerCase().slice(0, 32);
  const password = `spike-password-${RUN_ID}-${vu}`;
  if (!register(username, password)) return null;
  const token = login(username, password);
  return token ? { username, password, token } : null;
}

export default function (data) {
  if (!me) {
    me = onboard();
    if (!me) {
      sleep(1);
      return;
    }
  }
  const r = Math.random();
  const sale = Math.random() < 0.7 ? data.main : data.small;
  if (r < 0.6) {
    stockView(sale);
  } else if (r < 0.9) {
    const key = `sp-${exec.vu.idInTest}-${attempt++}`;
    const res = checkout(me.token, sale, key);
    if (res.kind === "created" && Math.random() < 0.1) verifyReplay(me.token, sale, key, res.order);
  } else if (r < 0.95) {
    const token = login(me.username, me.password);
    if (token) me.token = token;
  } else {
    const n = `${exec.vu.idInTest}-${exec.vu.iterationInInstance}`;
    register(`spx-${RUN_ID}-${n}`.toLowerCase().slice(0, 32), `throwaway-password-${n}`);
  }
  sleep(0.5 + Math.random());
}

export function handleSummary(data) {
  return summarize("spike", data);
}
