-- wrk script: a fixed request rate (Debian's wrk 4.1 has no -R), and the result as one JSON line.
--
-- wrk calls delay() before each request of a connection; every connection of a thread takes the next slot of
-- one schedule (a request every `interval` ms), so the thread sends at that rate whatever its connection count,
-- as long as the connections keep up. A slot missed because every connection was busy is dropped, not sent in a
-- burst later: the achieved rate then falls short, and the benchmark reports it. Latency is wrk's own (from the
-- request's write to its response), so the wait for a slot is not in it. wrk's timers have millisecond
-- granularity: a request leaves up to 1 ms before its slot, the rate stays the schedule's.
-- Arguments (after --): interval in milliseconds per thread.
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local interval = 1
local next_slot = nil

function init(args)
  interval = tonumber(args[1]) or 1
end

function delay()
  local now = now_ms()
  if next_slot == nil then
    next_slot = now
  end
  next_slot = next_slot + interval
  if next_slot < now then
    next_slot = now
  end
  return math.floor(next_slot - now)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests": %d, "duration_us": %d, "bytes": %d, "errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d}, "latency_us": {"p50": %.1f, "p90": %.1f, "p99": %.1f, ' ..
    '"p99.9": %.1f, "mean": %.1f, "max": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max))
end
