-- GET /v1/payments/m_1001/{out_trade_no} over LOAD_GET_N pre-created payments (named
-- LOAD_GET_PREFIX + 5 digits), round-robin, each thread starting at its own offset.
-- LOAD_REFRESH=true adds ?refresh=true (the channel is queried: one sign + one verify).
dofile(os.getenv("LOAD_LUA_DIR") .. "/common.lua")

local key = os.getenv("LOAD_API_KEY")
local n = tonumber(os.getenv("LOAD_GET_N") or "100")
local prefix = os.getenv("LOAD_GET_PREFIX") or "G"
local suffix = ""
if os.getenv("LOAD_REFRESH") == "true" then suffix = "?refresh=true" end
local i = nil

wrk.method = "GET"
wrk.headers["Authorization"] = "Bearer " .. key

function request()
  if i == nil then i = (tid * 37) % n end
  i = (i + 1) % n
  return wrk.format(nil, string.format("/v1/payments/m_1001/%s%05d%s", prefix, i, suffix))
end
