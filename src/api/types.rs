//! Request validation and response shapes of the unified API.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::error::{ApiError, ErrorCode};
use crate::domain::{Method, MAX_AMOUNT};
use crate::payment::{NewPayment, NewRefund, LATE_REFUND_PREFIX};

const CREATE_FIELDS: [&str; 11] = [
    "merchant_id",
    "out_trade_no",
    "amount",
    "currency",
    "method",
    "description",
    "payer",
    "expires_at",
    "return_url",
    "attach",
    "metadata",
];

/// The body as a JSON object. A key given twice is refused, at any depth: parsers disagree
/// on which one wins, so the shop and payroute could read different amounts.
fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let StrictJson(v) = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("body is not valid JSON: {e}"),
        )
    })?;
    match v {
        Value::Object(obj) => Ok(obj),
        _ => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "body must be a JSON object",
        )),
    }
}

/// A JSON value whose objects have no duplicate keys.
struct StrictJson(Value);

impl<'de> serde::Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<StrictJson, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StrictJson;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<StrictJson, E> {
                Ok(StrictJson(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<StrictJson, E> {
                Ok(StrictJson(Value::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<StrictJson, E> {
                Ok(StrictJson(Value::from(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<StrictJson, E> {
                Ok(StrictJson(Value::from(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<StrictJson, E> {
                Ok(StrictJson(Value::String(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<StrictJson, E> {
                Ok(StrictJson(Value::String(v)))
            }
            fn visit_unit<E>(self) -> Result<StrictJson, E> {
                Ok(StrictJson(Value::Null))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<StrictJson, A::Error> {
                let mut items = Vec::new();
                while let Some(StrictJson(v)) = seq.next_element()? {
                    items.push(v);
                }
                Ok(StrictJson(Value::Array(items)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<StrictJson, A::Error> {
                let mut obj = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    if obj.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
                    }
                    let StrictJson(v) = map.next_value()?;
                    obj.insert(key, v);
                }
                Ok(StrictJson(Value::Object(obj)))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses and validates a create-payment body. Every problem names its field.
pub fn parse_create(body: &[u8], now: OffsetDateTime) -> Result<NewPayment, ApiError> {
    let obj = json_object(body)?;
    if let Some(k) = obj.keys().find(|k| !CREATE_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::field(
            ErrorCode::InvalidRequest,
            k,
            format!("unknown field {k:?}"),
        ));
    }
    let merchant_id = string(&obj, "merchant_id", 1, 64)?.ok_or_else(|| missing("merchant_id"))?;
    let out_trade_no = order_no(&obj, "out_trade_no", 32)?;
    let amount = amount(obj.get("amount"))?;
    let currency = string(&obj, "currency", 1, 8)?.ok_or_else(|| missing("currency"))?;
    if currency != "CNY" {
        return Err(ApiError::field(
            ErrorCode::InvalidRequest,
            "currency",
            format!("currency {currency:?} is not supported (CNY)"),
        ));
    }
    let method = method(&obj)?;
    let description = string(&obj, "description", 1, 127)?.ok_or_else(|| missing("description"))?;
    let (openid, client_ip) = payer(&obj, method)?;
    let expires_at = expires_at(&obj, now)?;
    let return_url = string(&obj, "return_url", 1, 512)?;
    if let Some(u) = &return_url {
        if !(u.starts_with("https://") || u.starts_with("http://")) {
            return Err(ApiError::field(
                ErrorCode::InvalidRequest,
                "return_url",
                "return_url must be http(s)",
            ));
        }
    }
    let attach = string(&obj, "attach", 0, 128)?;
    let metadata = metadata(&obj)?;
    Ok(NewPayment {
        merchant_id,
        out_trade_no,
        amount,
        currency,
        method,
        description,
        openid,
        client_ip,
        expires_at,
        return_url,
        attach,
        metadata,
    })
}

fn method(obj: &Map<String, Value>) -> Result<Method, ApiError> {
    let method = string(obj, "method", 1, 32)?.ok_or_else(|| missing("method"))?;
    Method::parse(&method).ok_or_else(|| {
        let all: Vec<&str> = Method::ALL.iter().map(|m| m.as_str()).collect();
        ApiError::field(
            ErrorCode::InvalidRequest,
            "method",
            format!("unknown method {method:?}; one of {}", all.join(", ")),
        )
    })
}

/// `payer.openid` and `payer.client_ip`, with the one each WeChat method needs.
fn payer(
    obj: &Map<String, Value>,
    method: Method,
) -> Result<(Option<String>, Option<String>), ApiError> {
    let (openid, client_ip) = match obj.get("payer") {
        None | Some(Value::Null) => (None, None),
        Some(Value::Object(p)) => {
            if let Some(k) = p
                .keys()
                .find(|k| !["openid", "client_ip"].contains(&k.as_str()))
            {
                return Err(ApiError::field(
                    ErrorCode::InvalidRequest,
                    &format!("payer.{k}"),
                    format!("unknown field payer.{k}"),
                ));
            }
            let openid = string(p, "openid", 1, 128).map_err(|e| prefix(e, "payer."))?;
            let ip = string(p, "client_ip", 1, 45).map_err(|e| prefix(e, "payer."))?;
            if let Some(ip) = &ip {
                ip.parse::<IpAddr>().map_err(|_| {
                    ApiError::field(
                        ErrorCode::InvalidRequest,
                        "payer.client_ip",
                        format!("{ip:?} is not an IP address"),
                    )
                })?;
            }
            (openid, ip)
        }
        Some(_) => {
            return Err(ApiError::field(
                ErrorCode::InvalidRequest,
                "payer",
                "payer must be an object",
            ))
        }
    };
    if method == Method::WechatJsapi && openid.is_none() {
        return Err(ApiError::field(
            ErrorCode::InvalidRequest,
            "payer.openid",
            "wechat_jsapi needs payer.openid",
        ));
    }
    if method == Method::WechatH5 && client_ip.is_none() {
        return Err(ApiError::field(
            ErrorCode::InvalidRequest,
            "payer.client_ip",
            "wechat_h5 needs payer.client_ip",
        ));
    }
    Ok((openid, client_ip))
}

fn expires_at(
    obj: &Map<String, Value>,
    now: OffsetDateTime,
) -> Result<Option<OffsetDateTime>, ApiError> {
    let Some(s) = string(obj, "expires_at", 1, 64)? else {
        return Ok(None);
    };
    let t = OffsetDateTime::parse(&s, &Rfc3339).map_err(|_| {
        ApiError::field(
            ErrorCode::InvalidRequest,
            "expires_at",
            format!("{s:?} is not an RFC 3339 time"),
        )
    })?;
    // "At least a minute ahead" is the payment layer's check: it holds for a new
    // order, not for the replay of one created before.
    if t > now + time::Duration::days(30) {
        return Err(ApiError::field(
            ErrorCode::InvalidRequest,
            "expires_at",
            "expires_at must be within 30 days",
        ));
    }
    Ok(Some(t))
}

fn metadata(obj: &Map<String, Value>) -> Result<BTreeMap<String, String>, ApiError> {
    let m = match obj.get("metadata") {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(ApiError::field(
                ErrorCode::InvalidRequest,
                "metadata",
                "metadata must be an object of strings",
            ))
        }
    };
    if m.len() > 32 {
        return Err(ApiError::field(
            ErrorCode::InvalidRequest,
            "metadata",
            "metadata holds at most 32 keys",
        ));
    }
    let mut out = BTreeMap::new();
    for (k, v) in m {
        match v {
            Value::String(s) if s.chars().count() <= 256 && k.len() <= 64 => {
                out.insert(k.clone(), s.clone());
            }
            _ => {
                return Err(ApiError::field(
                    ErrorCode::InvalidRequest,
                    &format!("metadata.{k}"),
                    "metadata values are strings of at most 256 characters",
                ))
            }
        }
    }
    Ok(out)
}

/// Parses and validates a refund body.
pub fn parse_refund(body: &[u8]) -> Result<NewRefund, ApiError> {
    let obj = json_object(body)?;
    const FIELDS: [&str; 5] = [
        "merchant_id",
        "out_trade_no",
        "out_refund_no",
        "amount",
        "reason",
    ];
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::field(
            ErrorCode::InvalidRequest,
            k,
            format!("unknown field {k:?}"),
        ));
    }
    let merchant_id = string(&obj, "merchant_id", 1, 64)?.ok_or_else(|| missing("merchant_id"))?;
    let out_trade_no = order_no(&obj, "out_trade_no", 32)?;
    let out_refund_no = order_no(&obj, "out_refund_no", 64)?;
    // payroute's own refunds of late payments are numbered from the payment id: a shop's
    // refund under such a number would take the place of that refund.
    if out_refund_no.starts_with(LATE_REFUND_PREFIX) {
        return Err(ApiError::field(
            ErrorCode::InvalidRequest,
            "out_refund_no",
            format!("out_refund_no starting with {LATE_REFUND_PREFIX:?} is reserved for payroute's refunds of late payments"),
        ));
    }
    Ok(NewRefund {
        merchant_id,
        out_trade_no,
        out_refund_no,
        amount: amount(obj.get("amount"))?,
        reason: string(&obj, "reason", 1, 80)?,
    })
}

/// An order or refund number: `[A-Za-z0-9_\-|*]`, 1 to `max` characters.
fn order_no(obj: &Map<String, Value>, key: &str, max: usize) -> Result<String, ApiError> {
    let v = string(obj, key, 1, max)?.ok_or_else(|| missing(key))?;
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-|*".contains(&b))
    {
        return Err(ApiError::field(
            ErrorCode::InvalidRequest,
            key,
            format!("{key} may only hold A-Z a-z 0-9 _ - | *"),
        ));
    }
    Ok(v)
}

/// Integer minor units in `1..=MAX_AMOUNT`; floats, strings, zero and negatives are refused.
fn amount(v: Option<&Value>) -> Result<u64, ApiError> {
    let bad = |why: &str| ApiError::field(ErrorCode::InvalidAmount, "amount", why.to_string());
    match v {
        None | Some(Value::Null) => Err(bad("amount is required: an integer count of fen")),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(0) => Err(bad("amount must be at least 1 fen")),
            Some(a) if a > MAX_AMOUNT => Err(bad("amount is above 10000000000 fen")),
            Some(a) => Ok(a),
            None if n.is_i64() => Err(bad("amount must be positive")),
            None => Err(bad("amount must be an integer count of fen, not a decimal")),
        },
        Some(_) => Err(bad("amount must be a JSON integer (fen), not a string")),
    }
}

fn string(
    obj: &Map<String, Value>,
    key: &str,
    min: usize,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let n = s.chars().count();
            if n < min || n > max {
                return Err(ApiError::field(
                    ErrorCode::InvalidRequest,
                    key,
                    format!("{key} must be {min} to {max} characters"),
                ));
            }
            if s.chars().any(char::is_control) {
                return Err(ApiError::field(
                    ErrorCode::InvalidRequest,
                    key,
                    format!("{key} holds control characters"),
                ));
            }
            Ok(Some(s.clone()))
        }
        Some(_) => Err(ApiError::field(
            ErrorCode::InvalidRequest,
            key,
            format!("{key} must be a string"),
        )),
    }
}

fn missing(key: &str) -> ApiError {
    ApiError::field(ErrorCode::InvalidRequest, key, format!("{key} is required"))
}

fn prefix(mut e: ApiError, p: &str) -> ApiError {
    e.field = e.field.map(|f| format!("{p}{f}"));
    e.message = format!("{p}{}", e.message);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_given_twice_is_refused_at_any_depth() {
        let e = json_object(br#"{"amount":1,"amount":100000}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(
            e.message.contains("duplicate key \"amount\""),
            "{}",
            e.message
        );
        assert!(json_object(br#"{"payer":{"openid":"a","openid":"b"}}"#).is_err());
        assert!(json_object(br#"{"a":[{"x":1},{"x":2}],"b":1.5,"c":null}"#).is_ok());
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
    }

    fn body(amount: &str) -> String {
        format!(
            r#"{{"merchant_id":"m","out_trade_no":"o-1|*","amount":{amount},"currency":"CNY","method":"wechat_native","description":"d"}}"#
        )
    }

    #[test]
    fn amounts_must_be_positive_integers() {
        assert_eq!(
            parse_create(body("100").as_bytes(), now()).unwrap().amount,
            100
        );
        assert_eq!(
            parse_create(body("10000000000").as_bytes(), now())
                .unwrap()
                .amount,
            MAX_AMOUNT
        );
        for bad in [
            "1.5",
            "1.0",
            "\"100\"",
            "0",
            "-5",
            "10000000001",
            "1e3",
            "null",
            "18446744073709551616",
        ] {
            let e = parse_create(body(bad).as_bytes(), now()).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidAmount, "{bad}");
        }
    }

    #[test]
    fn fields_are_checked_and_named() {
        let e = parse_create(br#"{"merchant_id":"m"}"#, now()).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidRequest, Some("out_trade_no"))
        );
        let e = parse_create(body("1").replace("o-1|*", "bad no").as_bytes(), now()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("out_trade_no"));
        let e = parse_create(
            body("1")
                .replace("wechat_native", "wechat_jsapi")
                .as_bytes(),
            now(),
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("payer.openid"));
        let e = parse_create(
            body("1").replace("\"d\"", "\"d\",\"colour\":1").as_bytes(),
            now(),
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("colour"));
        let e = parse_create(b"[1]", now()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        let long = "x".repeat(128);
        let e = parse_create(
            body("1").replace("\"d\"", &format!("{long:?}")).as_bytes(),
            now(),
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("description"));
    }
}
