-- POST /v1/login/mfa with a valid TOTP code, each request with its own mfa_token and code.
--   wrk -t T -s mfa_step.lua URL -- PAIRS_FILE T
-- PAIRS_FILE has one "mfa_token code" line per prepared user (each user has its own TOTP
-- factor). Thread i takes lines i, i+T, i+2T, ... and uses each once: a token and a time step
-- are accepted only once, so a pair is never sent twice. A thread that runs out stops (and
-- counts "exhausted"); the benchmark prepares more pairs than the run can use.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local report = dofile(here .. "mfa_report.lua")

setup = report.setup

local requests_ = {}
local next_ = 1
exhausted = 0

function init(args)
   local path, nthreads = args[1], tonumber(args[2])
   local headers = {["Content-Type"] = "application/json"}
   local index = 0
   for line in io.lines(path) do
      if index % nthreads == thread_index then
         local token, code = line:match("^(%S+) (%d+)$")
         local body = string.format('{"mfa_token": "%s", "totp_code": "%s"}', token, code)
         table.insert(requests_, wrk.format("POST", "/v1/login/mfa", headers, body))
      end
      index = index + 1
   end
end

function request()
   local r = requests_[next_]
   if r == nil then
      exhausted = 1
      wrk.thread:stop()
      return requests_[#requests_]  -- answered 400 (spent token) and counted as "other"
   end
   next_ = next_ + 1
   return r
end

function response(status, headers, body)
   report.count(status)
end

function done(summary, latency, requests)
   report.done(summary, latency, {"ok", "refused", "other", "exhausted"})
end
