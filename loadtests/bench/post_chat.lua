-- wrk script for bench_gateway.py: POST a small chat completion, and print the
-- summary as one JSON line (prefixed BENCH_JSON) so the harness need not parse wrk's text.
-- Env: BENCH_BODY (the JSON body), BENCH_KEY (API key, sent as a Bearer token), BENCH_HEADERS
-- (extra headers, one "Name: value" a line; only for the peers that route by header).
local key = os.getenv("BENCH_KEY")
local extra = os.getenv("BENCH_HEADERS") or ""

wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end
for name, value in extra:gmatch("([^:\n]+):%s*([^\n]*)") do
  wrk.headers[name] = value
end
-- The body is bench/paired.py's body(): one request for every load of the benchmark.
wrk.body = assert(os.getenv("BENCH_BODY"), "BENCH_BODY is not set (bench_gateway.py sets it)")

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
    .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
    .. '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
