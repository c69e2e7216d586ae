// One open-model step of a capacity sweep (driven by load/capacity.sh):
// RATE requests/s for STEP seconds at ONE function, straight at its port (no
// router), then a JSON summary in CAP_OUT. TARGET picks the call:
//   auth-login      POST /auth/login of CAP_USERS pre-registered accounts
//   stock-view      GET  /stock/sales/$SALE_ID
//   order-checkout  POST /orders on a sale that never sells out (success path)
//   order-soldout   POST /orders on a sold-out sale (unkeyed: the fast path)
// Env: URL (the function's base URL), TARGET, RATE, STEP (s), VUS, SALE_ID,
// TOKENS_FILE (order-*), CAP_USERS (auth: "user:password,..."), CAP_OUT.
import { SharedArray } from "k6/data";
import exec from "k6/execution";
import http from "k6/http";
import { Counter, Rate, Trend } from "k6/metrics";

const URL = __ENV.URL;
const TARGET = __ENV.TARGET;
const RATE = Number(__ENV.RATE || 100);
const STEP = Number(__ENV.STEP || 10);
const VUS = Number(__ENV.VUS || Math.min(2000, Math.max(20, RATE)));
const SALE = __ENV.SALE_ID || "cap";

const tokens = new SharedArray("tokens", () =>
  __ENV.TOKENS_FILE ? JSON.parse(open(__ENV.TOKENS_FILE)).tokens.map((t) => t.token) : []
);
const users = (__ENV.CAP_USERS || "").split(",").filter(Boolean).map((u) => u.split(":"));

const latency = new Trend("latency", true);
const bad = new Rate("bad");
// Overload runs (capacity.sh overload): what got through, and how fast the
// rest was turned away.
const good = new Counter("good");
const shedLatency = new Trend("shed_latency", true);
const goodLatency = new Trend("good_latency", true);

export const options = {
  summaryTrendStats: ["avg", "med", "p(90)", "p(95)", "p(99)", "max", "count"],
  discardResponseBodies: true,
  scenarios: {
    step: {
      executor: "constant-arrival-rate",
      rate: RATE,
      timeUnit: "1s",
      duration: `${STEP}s`,
      preAllocatedVUs: VUS,
      maxVUs: VUS,
    },
  },
};

const json = { "Content-Type": "application/json" };
const body = JSON.stringify({ sale_id: SALE });

export default function () {
  const i = exec.scenario.iterationInTest;
  let res;
  let ok;
  switch (TARGET) {
    case "auth-login": {
      const [username, password] = users[i % users.length];
      res = http.post(`${URL}/auth/login`, JSON.stringify({ username, password }), { headers: json });
      ok = res.status === 200;
      break;
    }
    case "stock-view":
      res = http.get(`${URL}/stock/sales/${SALE}`);
      ok = res.status === 200;
      break;
    case "order-checkout":
      res = http.post(`${URL}/orders`, body, { headers: { ...json, Authorization: `Bearer ${tokens[i % tokens.length]}` } });
      ok = res.status === 201;
      break;
    case "order-soldout":
      res = http.post(`${URL}/orders`, body, { headers: { ...json, Authorization: `Bearer ${tokens[i % tokens.length]}` } });
      ok = res.status === 409;
      break;
    default:
      throw new Error(`unknown TARGET ${TARGET}`);
  }
  latency.add(res.timings.duration);
  bad.add(!ok, { status: String(res.status) });
  if (ok) {
    good.add(1);
    goodLatency.add(res.timings.duration);
  } else if (res.status === 503 || res.status === 429) {
    shedLatency.add(res.timings.duration);
  }
}

function pick(metric) {
  if (!metric) return { count: 0 };
  const v = metric.values;
  return { count: v.count, p50: v.med, p99: v["p(99)"], max: v.max };
}

export function handleSummary(data) {
  const l = data.metrics.latency ? data.metrics.latency.values : {};
  const reqs = data.metrics.http_reqs ? data.metrics.http_reqs.values : { count: 0, rate: 0 };
  const out = {
    tool: "k6",
    target: TARGET,
    offered_rps: RATE,
    step_s: STEP,
    achieved_rps: reqs.rate,
    requests: reqs.count,
    error_rate: data.metrics.bad ? data.metrics.bad.values.rate : 1,
    dropped: data.metrics.dropped_iterations ? data.metrics.dropped_iterations.values.count : 0,
    ms: { avg: l.avg, p50: l.med, p90: l["p(90)"], p95: l["p(95)"], p99: l["p(99)"], max: l.max },
    goodput_rps: (data.metrics.good ? data.metrics.good.values.count : 0) / STEP,
    good_ms: pick(data.metrics.good_latency),
    shed: pick(data.metrics.shed_latency),
  };
  return { [__ENV.CAP_OUT]: JSON.stringify(out), stdout: `${TARGET} @${RATE}/s: ${JSON.stringify(out)}\n` };
}
