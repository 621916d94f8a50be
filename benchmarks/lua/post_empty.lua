-- POST to a path with an empty body (benchmarks/floor.py).
--   wrk -s post_empty.lua URL -- PATH
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local report = dofile(here .. "report.lua")

setup = report.setup

function init(args)
   wrk.method = "POST"
   wrk.path = args[1]
end

function done(summary, latency, requests)
   report.done(summary, latency)
end
