-- Shared by mfa_step.lua and mfa_healthz.lua: done() prints one line, "MFA_JSON {...}", with
-- wrk's counters and the per-thread status counters the script names.
local M = {}

local threads = {}

function M.setup(thread)
   thread:set("thread_index", #threads)
   table.insert(threads, thread)
end

function M.count(status)
   if status == 200 then
      ok = (ok or 0) + 1
   elseif status == 401 then
      refused = (refused or 0) + 1
   else
      other = (other or 0) + 1
   end
end

function M.done(summary, latency, counters)
   local extra = {}
   for _, name in ipairs(counters) do
      local total = 0
      for _, thread in ipairs(threads) do
         total = total + (thread:get(name) or 0)
      end
      table.insert(extra, string.format('"%s": %d', name, total))
   end
   local e = summary.errors
   io.write(string.format(
      'MFA_JSON {"requests": %d, "duration_us": %d, ' ..
      '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, ' ..
      '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}, ' ..
      '"statuses": {%s}}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean, table.concat(extra, ", ")))
end

return M
