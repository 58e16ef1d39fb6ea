-- Shared by the registry benchmark's wrk scripts: open-ended pacing and a JSON summary.
-- Each connection waits a random delay (mean LLMESH_DELAY_MS) between requests, so requests
-- arrive spread out as they would from independent clients, not in lockstep bursts.
local common = {}

local delayMs = tonumber(os.getenv("LLMESH_DELAY_MS") or "50")

function common.delay()
  return delayMs * (0.5 + math.random())
end

function common.done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests":%d,"bytes":%d,"durationUs":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"p50":%f,"p90":%f,"p99":%f,"max":%f}\n',
    summary.requests, summary.bytes, summary.duration,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000))
end

return common
