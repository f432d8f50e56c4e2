-- wrk script: POST /orders with the 200-byte JSON body of the in-process benchmarks and
-- a new Idempotency-Key on every request (unique across wrk's threads).
local body = '{"pad":"' .. string.rep("x", 190) .. '"}'
local counter = 0
local prefix = "k"

function setup(thread)
  thread:set("prefix", "t" .. tostring(math.random(1, 1000000000)))
end

function init(args)
  prefix = prefix .. "-" .. tostring(os.time())
end

function request()
  counter = counter + 1
  return wrk.format("POST", "/orders", {
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = prefix .. "-" .. counter,
  }, body)
end
