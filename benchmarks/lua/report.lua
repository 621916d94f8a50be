-- Shared by the benchmark scripts: done() prints one JSON line, prefixed "WRK_JSON ",
-- with the counters wrk keeps and any per-thread counters the script names in `counters`.
local M = {}

local threads = {}

function M.setup(thread)
   thread:set("thread_index", #threads)
   table.insert(threads, thread)
end

function M.done(summary, latency, counters)
   local extra = {}
   for _, name in ipairs(counters or {}) do
      local total = 0
      for _, thread in ipairs(threads) do
         total = total + (thread:get(name) or 0)
      end
      table.insert(extra, string.format('"%s": %d', name, total))
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}, ' ..
      '"counters": {%s}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean, table.concat(extra, ", ")))
end

return M
