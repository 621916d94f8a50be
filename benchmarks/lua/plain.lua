-- A request with no body, optionally with a bearer token: GET /healthz, GET /v1/me, and the
-- POSTs of floor.py.
--   wrk -s plain.lua URL -- METHOD PATH [ACCESS_TOKEN]
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local report = dofile(here .. "report.lua")

setup = report.setup

function init(args)
   wrk.method = args[1]
   wrk.path = args[2]
   if args[3] then
      wrk.headers["Authorization"] = "Bearer " .. args[3]
   end
end

function done(summary, latency, requests)
   report.done(summary, latency)
end
