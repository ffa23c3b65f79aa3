//! Redaction for `/admin/config`: the file as parsed, literal secrets replaced.

use crate::secret;

/// Keys whose literal values are secrets; `/admin/config` redacts them.
const SECRET_KEYS: [&str; 7] = [
    "api_key",
    "secret",
    "token",
    "private_key",
    "apiv3_key",
    "alipay_app_auth_token",
    "key",
];

/// Replaces literal secret values with `<redacted>`; `env:`/`file:` references stay, since
/// they name where the secret lives, not what it is.
pub(super) fn redact(mut v: serde_json::Value) -> serde_json::Value {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, val) in map.iter_mut() {
                    if SECRET_KEYS.contains(&k.as_str()) {
                        if let serde_json::Value::String(s) = val {
                            if !secret::is_reference(s) {
                                *s = "<redacted>".into();
                            }
                            continue;
                        }
                    }
                    walk(val);
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    // `store.url` may carry a password (`postgres://user:pw@…`); other `url`s (webhooks,
    // base urls) are not secrets and stay readable.
    if let Some(serde_json::Value::String(url)) = v.pointer_mut("/store/url") {
        if !secret::is_reference(url) {
            *url = "<redacted>".into();
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_literal_store_url_is_redacted_a_reference_and_other_urls_stay() {
        let v = redact(serde_json::json!({
            "store": { "kind": "postgres", "url": "postgres://app:hunter2@db/pay" },
            "shops": [{ "webhook": { "url": "https://shop.example/hook" } }],
        }));
        assert_eq!(v["store"]["url"], "<redacted>");
        assert_eq!(v["shops"][0]["webhook"]["url"], "https://shop.example/hook");
        let v = redact(serde_json::json!({ "store": { "url": "env:PAYROUTE_PG_URL" } }));
        assert_eq!(v["store"]["url"], "env:PAYROUTE_PG_URL");
    }
}
