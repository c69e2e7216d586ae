-- wrk script: POST a JSON body with a bearer token, rotating through tokens.
--   METHOD (POST), REQ_PATH (/orders), BODY ('{"sale_id":"$SALE_ID"}'),
--   TOKENS_FILE (one token per line; optional), TOKEN (a single token; optional),
--   IDEMPOTENCY=1 adds a fresh Idempotency-Key per request.
-- done() prints one line "WRK_JSON {...}" with rate and latency percentiles
-- (microseconds), which load/capacity.sh and load/bench-compare.sh parse.
local method = os.getenv("METHOD") or "POST"
local path = os.getenv("REQ_PATH") or "/orders"
local body = os.getenv("BODY") or ('{"sale_id":"' .. (os.getenv("SALE_ID") or "bench") .. '"}')
local keyed = os.getenv("IDEMPOTENCY") == "1"
local tokens = {}
local counter = 0
local threads = {}

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end

-- Everything is decided when the script loads (each wrk thread loads it):
-- a single token and no Idempotency-Key make a static request, which costs
-- wrk no Lua call per request (it matters at 40k+ requests/s).
local file = os.getenv("TOKENS_FILE")
if file and file ~= "" then
  for line in io.lines(file) do
    if line ~= "" then tokens[#tokens + 1] = line end
  end
elseif os.getenv("TOKEN") and os.getenv("TOKEN") ~= "" then
  tokens[1] = os.getenv("TOKEN")
end

if #tokens > 1 or keyed then
  function init(args)
    n = (tid or 1) * 7919
    seq = 0
  end

  function request()
    local headers = { ["Content-Type"] = "application/json" }
    if #tokens > 0 then
      n = n + 1
      headers["Authorization"] = "Bearer " .. tokens[(n % #tokens) + 1]
    end
    if keyed then
      seq = seq + 1
      headers["Idempotency-Key"] = "wrk-" .. tostring(tid) .. "-" .. seq .. "-" .. os.time()
    end
    if method == "GET" then
      return wrk.format("GET", path, headers)
    end
    return wrk.format(method, path, headers, body)
  end
else
  wrk.method = method
  wrk.path = path
  if method ~= "GET" then
    wrk.body = body
    wrk.headers["Content-Type"] = "application/json"
  end
  if #tokens == 1 then wrk.headers["Authorization"] = "Bearer " .. tokens[1] end
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_s":%.3f,"rps":%.1f,"non2xx":%d,"socket_errors":%d,' ..
    '"lat_us":{"mean":%.1f,"p50":%d,"p90":%d,"p95":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, secs, summary.requests / secs, e.status, e.connect + e.read + e.write + e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
