-- Host lookups of random models (acme/model-0 to acme/model-<LLMESH_MODELS - 1>), read access.
package.path = os.getenv("LLMESH_WRK_DIR") .. "/?.lua;" .. package.path
local common = require("common")

local models = tonumber(os.getenv("LLMESH_MODELS"))
local headers = { ["authorization"] = "Bearer " .. os.getenv("LLMESH_READ_TOKEN") }

function init(args)
  math.randomseed(os.time() + 1)
end

function request()
  return wrk.format("GET", "/v1/hosts?model=acme/model-" .. math.random(0, models - 1), headers)
end

delay = common.delay
done = common.done
