-- wrk script for the ingestlayer benchmarks: POST one fixed body with fixed headers, then write a
-- JSON summary (requests, errors, elapsed, latency percentiles) to $WRK_OUT.
-- Environment: WRK_BODY_FILE (the body), WRK_HEADERS (a flat JSON object of header: value).

local f = assert(io.open(os.getenv("WRK_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
-- WRK_HEADERS is produced by json.dumps on plain ASCII strings: "k": "v" pairs, no nesting.
for k, v in string.gmatch(os.getenv("WRK_HEADERS") or "{}", '"([^"]+)":%s*"([^"]*)"') do
  wrk.headers[k] = v
end

function done(summary, latency, requests)
  local e = summary.errors
  local bad = e.connect + e.read + e.write + e.status + e.timeout
  local out = assert(io.open(os.getenv("WRK_OUT"), "w"))
  out:write(string.format(
    '{"requests": %d, "errors": %d, "elapsed": %.6f, "p50_ms": %.3f, "p99_ms": %.3f, ' ..
    '"status_errors": %d, "socket_errors": %d}\n',
    summary.requests - e.status, bad, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.status, e.connect + e.read + e.write + e.timeout))
  out:close()
end
