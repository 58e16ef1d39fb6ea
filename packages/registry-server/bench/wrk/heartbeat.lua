-- Heartbeats from simulated nodes, each with its own credential: node-<i> with the i-th token of
-- the file LLMESH_TOKENS (one per line), taken in turn, so each node beats once per cycle.
package.path = os.getenv("LLMESH_WRK_DIR") .. "/?.lua;" .. package.path
local common = require("common")

local tokens = {}
for line in io.lines(os.getenv("LLMESH_TOKENS")) do tokens[#tokens + 1] = line end
local body = '{"inFlight":1,"queueDepth":0,"tokensPerSecond":25.5,"loadedModels":["'
  .. string.rep("0", 63) .. '1"]}'
local next = 0

function init(args)
  math.randomseed(os.time())
  next = math.random(0, #tokens - 1)
end

function request()
  next = (next + 1) % #tokens
  return wrk.format("POST", "/v1/nodes/node-" .. next .. "/heartbeat", {
    ["authorization"] = "Bearer " .. tokens[next + 1],
    ["content-type"] = "application/json",
  }, body)
end

delay = common.delay
done = common.done
