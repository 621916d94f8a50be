-- GET a path, optionally with a bearer token: /healthz, /v1/me.
--   wrk -s get.lua URL -- PATH [ACCESS_TOKEN]
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local report = dofile(here .. "report.lua")

setup = report.setup

function init(args)
   wrk.method = "GET"
   wrk.path = args[1]
   if args[2] then
      wrk.headers["Authorization"] = "Bearer " .. args[2]
   end
end

function done(summary, latency, requests)
   report.done(summary, latency)
end
