-- POST /v1/payments, wechat_native on m_1001 (its own WeChat channel, direct mode): one RSA
-- signature of the request and one verification of the answer per create. Every
-- out_trade_no is unique: LOAD_TAG (per phase) + wrk thread id + a per-thread counter,
-- at most 32 chars of [A-Za-z0-9_-].
dofile(os.getenv("LOAD_LUA_DIR") .. "/common.lua")

local tag = os.getenv("LOAD_TAG") or "c"
local key = os.getenv("LOAD_API_KEY")
local counter = 0

wrk.method = "POST"
wrk.path = "/v1/payments"
wrk.headers["Authorization"] = "Bearer " .. key
wrk.headers["Content-Type"] = "application/json"

function request()
  counter = counter + 1
  local no = string.format("%s-%d-%d", tag, tid, counter)
  local body = '{"merchant_id":"m_1001","out_trade_no":"' .. no ..
    '","amount":1999,"currency":"CNY","method":"wechat_native","description":"load bench mug"}'
  return wrk.format(nil, nil, nil, body)
end
