-- GET /healthz, the trivial endpoint the MFA step is compared with.
--   wrk -s mfa_healthz.lua URL
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local report = dofile(here .. "mfa_report.lua")

setup = report.setup

function init(args)
   wrk.method = "GET"
   wrk.path = "/healthz"
end

function response(status, headers, body)
   report.count(status)
end

function done(summary, latency, requests)
   report.done(summary, latency, {"ok", "refused", "other"})
end
