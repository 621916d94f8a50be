-- POST /v1/token/refresh, rotating real refresh tokens. A refresh token is good for one use, so
-- each thread starts with its own share of live tokens (from logins made before the run: one per
-- connection plus one spare per thread, because wrk builds one request of thread 0 before the
-- run to check the script) and every 200 answer's new refresh_token goes back into the thread's
-- pool for the next request. A non-200 answer loses a token; a request that finds the pool
-- empty sends a token that does not exist (an honest 400, counted as "starved").
--   wrk -t T -c C -s refresh.lua URL -- TOKENS_FILE T   (C + T tokens, one per line)
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local report = dofile(here .. "report.lua")

setup = report.setup

function init(args)
   pool, rotated, failed, starved = {}, 0, 0, 0
   local lines = {}
   for line in io.lines(args[1]) do
      if #line > 0 then table.insert(lines, line) end
   end
   local threads = tonumber(args[2])
   for i, token in ipairs(lines) do
      if (i - 1) % threads == thread_index then table.insert(pool, token) end
   end
end

function request()
   local token = table.remove(pool)
   if token == nil then
      starved = starved + 1
      token = "rt_starved"
   end
   return wrk.format("POST", "/v1/token/refresh", {["Content-Type"] = "application/json"},
                     '{"refresh_token": "' .. token .. '"}')
end

function response(status, headers, body)
   if status == 200 then
      local token = body:match('"refresh_token"%s*:%s*"([^"]+)"')
      if token then
         table.insert(pool, token)
         rotated = rotated + 1
         return
      end
   end
   failed = failed + 1
end

function done(summary, latency, requests)
   report.done(summary, latency, {"rotated", "failed", "starved"})
end
