-- wrk script for the benchmark harness.
--
-- Adds the API key header to every request. The keys come from the file
-- named by BENCH_KEY_FILE (one per line), never from the command line, so
-- they do not show up in a process listing. With one key the request is
-- static; with several, each request takes the next key, so requests that
-- are in flight together carry different keys.
--
-- When the run ends, prints one line "BENCH_RESULT {json}" that the harness
-- parses: counts, error kinds and latency percentiles in microseconds.

local header = os.getenv("BENCH_KEY_HEADER") or "X-API-Key"
local path = os.getenv("BENCH_KEY_FILE")
local keys = {}

if path and #path > 0 then
  for line in io.lines(path) do
    if #line > 0 then
      keys[#keys + 1] = line
    end
  end
end

if #keys == 1 then
  wrk.headers[header] = keys[1]
elseif #keys > 1 then
  local headers = {}
  local next_key = 0
  request = function()
    next_key = next_key % #keys + 1
    headers[header] = keys[next_key]
    return wrk.format(nil, nil, headers)
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
