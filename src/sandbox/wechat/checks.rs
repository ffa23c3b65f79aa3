//! What the simulated WeChat Pay checks a request against: the account ids faults may name,
//! the HTTP status WeChat Pay documents for an error code, a create's fields.

use super::*;

/// The account ids a signed `/v3` request names, for [`Faults::accounts`]: the signing
/// merchant (`mchid`, or `sp_mchid` in partner mode), and the merchant and app ids of its
/// body and query (`sub_mchid` of a partner query or refund query is in the query).
pub(super) fn account_ids(auth_mchid: &str, path_and_query: &str, body: &[u8]) -> Vec<String> {
    const FIELDS: [&str; 6] = [
        "mchid",
        "sp_mchid",
        "sub_mchid",
        "appid",
        "sp_appid",
        "sub_appid",
    ];
    let mut ids = vec![auth_mchid.to_string()];
    if let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) {
        ids.extend(
            FIELDS
                .iter()
                .filter_map(|k| req.get(*k)?.as_str())
                .map(str::to_string),
        );
    }
    ids.extend(FIELDS.iter().filter_map(|k| query_param(path_and_query, k)));
    ids
}

/// The HTTP status WeChat Pay answers an error `code` with (its API v3 error tables), so an
/// injected `NO_AUTH` is a 403 as at WeChat Pay; 500 for `SYSTEM_ERROR`, `BANK_ERROR` and any
/// code not listed.
pub(super) fn documented_status(code: &str) -> u16 {
    match code {
        "PARAM_ERROR"
        | "NO_STATEMENT_EXIST"
        | "INVALID_REQUEST"
        | "APPID_MCHID_NOT_MATCH"
        | "MCH_NOT_EXISTS"
        | "ORDER_CLOSED"
        | "INVALID_TRANSACTIONID" => 400,
        "SIGN_ERROR" => 401,
        "NO_AUTH"
        | "ACCOUNT_ERROR"
        | "ORDERPAID"
        | "OUT_TRADE_NO_USED"
        | "RULE_LIMIT"
        | "TRADE_ERROR"
        | "NOT_ENOUGH"
        | "USER_ACCOUNT_ABNORMAL" => 403,
        "ORDER_NOT_EXIST" | "ORDERNOTEXIST" | "RESOURCE_NOT_EXISTS" => 404,
        "FREQUENCY_LIMITED" => 429,
        _ => 500,
    }
}

/// What a create that passed [`check_create`] asks for beyond its body.
pub(super) struct ValidCreate {
    pub(super) sub_mchid: Option<String>,
    pub(super) total: u64,
}

/// WeChat Pay's answer to a request parameter it refuses.
pub(super) fn param_error(message: &str) -> (StatusCode, Value) {
    (
        StatusCode::BAD_REQUEST,
        json!({"code":"PARAM_ERROR","message":message}),
    )
}

/// The fields WeChat Pay requires of a create of `kind` in this mode; `Err` is its answer.
pub(super) fn check_create(
    req: &Value,
    auth_mchid: &str,
    partner: bool,
    kind: &str,
) -> Result<ValidCreate, (StatusCode, Value)> {
    let bad = |m: &str| Err(param_error(m));
    let s = |k: &str| req[k].as_str().filter(|v| !v.is_empty());
    let (mchid_field, app_field) = if partner {
        ("sp_mchid", "sp_appid")
    } else {
        ("mchid", "appid")
    };
    if s(mchid_field) != Some(auth_mchid) {
        return bad(&format!("{mchid_field} must equal the signing merchant"));
    }
    if s(app_field).is_none() {
        return bad(&format!("{app_field} is required"));
    }
    let sub_mchid = if partner {
        match s("sub_mchid") {
            Some(v) => Some(v.to_string()),
            None => return bad("sub_mchid is required"),
        }
    } else {
        if req.get("sub_mchid").is_some() {
            return bad("sub_mchid is not a direct-mode field");
        }
        None
    };
    for k in ["description", "out_trade_no", "notify_url"] {
        if s(k).is_none() {
            return bad(&format!("{k} is required"));
        }
    }
    let Some(total) = req["amount"]["total"].as_u64().filter(|t| *t > 0) else {
        return bad("amount.total must be a positive integer");
    };
    if kind == "jsapi" {
        let payer = &req["payer"];
        let ok = if partner {
            payer["sp_openid"].is_string() || payer["sub_openid"].is_string()
        } else {
            payer["openid"].is_string()
        };
        if !ok {
            return bad("payer openid is required for jsapi");
        }
    }
    if kind == "h5" && !req["scene_info"]["payer_client_ip"].is_string() {
        return bad("scene_info.payer_client_ip is required for h5");
    }
    Ok(ValidCreate { sub_mchid, total })
}
