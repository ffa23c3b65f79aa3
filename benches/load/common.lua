-- Shared by every phase of benches/load.sh (loaded with dofile from the phase script).
--
-- * counts answers by class in each thread (wrk's response() hook) and prints one summary
--   line in done(), so a non-2xx answer is counted and reported, never silently folded into
--   the latency figures;
-- * paces each connection when LOAD_RATE is set: Debian's wrk (4.x, not wrk2) has no
--   fixed-rate mode, so every connection waits delay() ms before its next request, about
--   LOAD_CONNS / LOAD_RATE seconds (jittered ±50% so connections do not march in step).
--   The achieved rate is what done() reports; latency is measured from the send, so the
--   pause is not in it.

local threads = {}
local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

ok2xx = 0
non2xx = 0
by_status = {}

function response(status, headers, body)
  if status >= 200 and status < 300 then
    ok2xx = ok2xx + 1
  else
    non2xx = non2xx + 1
    by_status[status] = (by_status[status] or 0) + 1
    if non2xx <= 3 then
      io.stderr:write("non-2xx " .. status .. ": " .. string.sub(body or "", 1, 300) .. "\n")
    end
  end
end

local rate = tonumber(os.getenv("LOAD_RATE") or "")
local conns = tonumber(os.getenv("LOAD_CONNS") or "")
local pause_ms = nil
if rate and rate > 0 and conns then
  pause_ms = conns * 1000.0 / rate
end

if pause_ms then
  function delay()
    return math.floor(pause_ms * (0.5 + math.random()))
  end
end

function done(summary, latency, requests)
  local ok, bad, statuses = 0, 0, {}
  for _, t in ipairs(threads) do
    ok = ok + (t:get("ok2xx") or 0)
    bad = bad + (t:get("non2xx") or 0)
  end
  local secs = summary.duration / 1e6
  local e = summary.errors
  local sockerr = e.connect + e.read + e.write + e.timeout
  -- One machine-readable line; benches/load.sh parses it.
  io.write(string.format(
    "LOADRESULT requests=%d secs=%.3f rps=%.1f ok2xx=%d non2xx=%d sockerr=%d timeouts=%d p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f mean_ms=%.3f\n",
    summary.requests, secs, summary.requests / secs, ok, bad, sockerr, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, latency.mean / 1000))
end
