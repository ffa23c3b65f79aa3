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

/// `redis://:pw@host:6379` → `redis://<redacted>@host:6379`: a URL may carry a password.
fn without_userinfo(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    Some(format!("{scheme}://<redacted>{}", &rest[at..]))
}

/// Replaces literal secret values with `<redacted>`; `env:`/`file:` references stay, since
/// they name where the secret lives, not what it is.
pub(super) fn redact(mut v: serde_json::Value) -> serde_json::Value {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, val) in map.iter_mut() {
                    if k.ends_with("url") {
                        if let serde_json::Value::String(s) = val {
                            if let Some(clean) = without_userinfo(s) {
                                *s = clean;
                            }
                            continue;
                        }
                    }
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
    // A literal `store.url` is redacted whole: PostgreSQL also takes a password as
    // `?password=` or in the `key=value` form, where stripping the userinfo does not reach.
    if let Some(serde_json::Value::String(url)) = v.pointer_mut("/store/url") {
        if !secret::is_reference(url) {
            *url = "<redacted>".into();
        }
    }
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_in_urls_are_redacted() {
        let v = super::redact(serde_json::json!({
            "redis": { "url": "redis://:hunter2@10.0.0.5:6379/0" },
            "store": { "url": "postgres://payroute:s3cret@db/pay?sslmode=require" },
            "webhook": { "url": "https://shop.example/hook" },
        }));
        let text = v.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("s3cret"),
            "{text}"
        );
        assert_eq!(v["redis"]["url"], "redis://<redacted>@10.0.0.5:6379/0");
        assert_eq!(v["webhook"]["url"], "https://shop.example/hook");
    }

    #[test]
    fn a_literal_store_url_is_redacted_whole_a_reference_stays() {
        use super::*;
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
