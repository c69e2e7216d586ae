// Soak: steady mixed load for DURATION (default 5m), open model (arrival
// rates, so a slow system gets more concurrent requests, not fewer):
//   READ_RATE/s      stock views (default 50/s per core of GEN_CORES, run.sh: nproc;
//                    100/s with GEN_CORES unset)
//   CHECKOUT_RATE/s  checkouts by USERS real accounts (default 10/s per core,
//                    20/s unset; 80 % on a sale that never sells out, 20 % on a
//                    small one that sells out early and then exercises the
//                    sold-out path)
//   LOGIN_RATE/s     logins (default 1/s), REGISTER_EVERY s one new account (2 s)
// setup() registers and logs in USERS accounts (default CHECKOUT_RATE, at least
// 20: one checkout per user per second stays far inside the per-user rate
// limit); tokens older than 10 minutes are refreshed by the VU holding them.
//
// Env: BASE_URL (or AUTH_URL, STOCK_URL, ORDER_URL), ADMIN_TOKEN, DURATION, READ_RATE, CHECKOUT_RATE, LOGIN_RATE,
// REGISTER_EVERY, USERS, STOCK_SMALL, and the threshold knobs below.
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

const DURATION = envStr("DURATION", "5m");
const READ_RATE = envInt("READ_RATE", byCores(50, 100));
const CHECKOUT_RATE = envInt("CHECKOUT_RATE", byCores(10, 20));
const LOGIN_RATE = envInt("LOGIN_RATE", 1);
const REGISTER_EVERY = envInt("REGISTER_EVERY", 2);
const USERS = envInt("USERS", Math.max(20, CHECKOUT_RATE));
const STOCK_SMALL = envInt("STOCK_SMALL", 100);
const ARRIVALS = Math.floor(seconds(DURATION) * (READ_RATE + CHECKOUT_RATE + LOGIN_RATE + 1 / REGISTER_EVERY));

const P99_CHECKOUT_MS = envInt("P99_CHECKOUT_MS", 20);
const P99_SOLD_OUT_MS = envInt("P99_SOLD_OUT_MS", 5);
const P99_STOCK_MS = envInt("P99_STOCK_MS", 10);
const P99_LOGIN_MS = envInt("P99_LOGIN_MS", 1000);
const MAX_ERROR_RATE = Number(envStr("MAX_ERROR_RATE", "0.01"));

function rate(r) {
  return { executor: "constant-arrival-rate", rate: r, timeUnit: "1s", duration: DURATION, preAllocatedVUs: Math.max(5, Math.ceil(r / 5)), maxVUs: Math.max(20, r * 2) };
}

export const options = {
  summaryTrendStats: TREND_STATS,
  setupTimeout: "120s",
  scenarios: {
    reads: { ...rate(READ_RATE), exec: "reads" },
    checkouts: { ...rate(CHECKOUT_RATE), exec: "checkouts" },
    logins: { ...rate(LOGIN_RATE), exec: "logins" },
    registers: { ...rate(1), timeUnit: `${REGISTER_EVERY}s`, preAllocatedVUs: 2, maxVUs: 10, exec: "registers" },
    probe: probeScenario("soak", DURATION),
  },
  thresholds: {
    unexpected_errors: [`rate<${MAX_ERROR_RATE}`],
    checkout_created: [`p(99)<${P99_CHECKOUT_MS}`],
    checkout_sold_out: [`p(99)<${P99_SOLD_OUT_MS}`],
    stock_view: [`p(99)<${P99_STOCK_MS}`],
    auth_login: [`p(99)<${P99_LOGIN_MS}`],
    replay_mismatch: ["count==0"],
    ...generatorThresholds(["soak"], ARRIVALS),
  },
};

export function setup() {
  const main = `soak-${RUN_ID}-main`;
  const small = `soak-${RUN_ID}-small`;
  createSale(main, 10000000, 10000000, "soak main (never sells out)");
  createSale(small, STOCK_SMALL, STOCK_SMALL, "soak small (sells out early)");
  const users = [];
  for (let i = 0; i < USERS; i++) {
    const username = `so-${RUN_ID}-${i}`.toLowerCase();
    const password = `soak-password-${RUN_ID}-${i}`;
    if (!register(username, password)) throw new Error(`could not register ${username}`);
    const token = login(username, password);
    if (!token) throw new Error(`could not log in ${username}`);
    users.push({ username, password, token, at: Date.now() });
  }
  // The small sale gets ~CHECKOUT_RATE/5 checkouts a second: sold out well within a minute.
  const expect = seconds(DURATION) >= (3 * STOCK_SMALL) / Math.max(1, CHECKOUT_RATE / 5) ? [small] : [];
  return { sales: [main, small], expect_sold_out: expect, main, small, users };
}

const fresh = {}; // per-VU refreshed tokens

function tokenFor(u) {
  const mine = fresh[u.username] || u;
  if (Date.now() - mine.at < 10 * 60 * 1000) return mine.token;
  const token = login(u.username, u.password);
  if (token) fresh[u.username] = { token, at: Date.now() };
  return token || mine.token;
}

export function reads(data) {
  stockView(Math.random() < 0.8 ? data.main : data.small);
}

export function checkouts(data) {
  const n = exec.scenario.iterationInTest;
  const u = data.users[n % data.users.length];
  const sale = Math.random() < 0.8 ? data.main : data.small;
  const key = `soak-${n}`;
  const token = tokenFor(u);
  const res = checkout(token, sale, key);
  if (res.kind === "created" && n % 20 === 0) verifyReplay(token, sale, key, res.order);
}

export function logins(data) {
  const u = data.users[exec.scenario.iterationInTest % data.users.length];
  login(u.username, u.password);
}

export function registers() {
  const n = exec.scenario.iterationInTest;
  register(`sox-${RUN_ID}-${n}`.toLowerCase(), `soak-throwaway-${RUN_ID}-${n}`);
}

export function handleSummary(data) {
  return summarize("soak", data, ARRIVALS);
}
