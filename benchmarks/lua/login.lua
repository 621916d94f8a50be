-- POST /v1/login with one registered user's correct credentials, over and over.
--   wrk -s login.lua URL -- EMAIL PASSWORD
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local report = dofile(here .. "report.lua")

setup = report.setup

function init(args)
   wrk.method = "POST"
   wrk.path = "/v1/login"
   wrk.headers["Content-Type"] = "application/json"
   wrk.body = string.format('{"email": "%s", "password": "%s"}', args[1], args[2])
end

function done(summary, latency, requests)
   report.done(summary, latency)
end
