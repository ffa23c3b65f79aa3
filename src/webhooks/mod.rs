//! Shop webhooks: the durable outbox of shop events and their signed delivery to the shop
//! ([`outbox`]).
//!
//! Events are written by `payment` in the same store transaction as the state change they
//! tell of; this module only delivers them. Provider notifications coming in are `inbound`'s.

pub mod outbox;

pub use crate::config::workers::WebhookSettings;

/// `Payroute-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &[u8], unix_secs: i64, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
    ctx.update(unix_secs.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    format!("t={unix_secs},v1={}", crate::ids::hex(tag.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        // Known answer from Python's hmac module (an independent implementation).
        assert_eq!(
            signature(b"whsec", 1_700_000_000, br#"{"id":"evt_1"}"#),
            "t=1700000000,v1=e7e846cdb96220c3674ade89e534304fc91f6f15064facee1e7a7096f5f57f62"
        );
        assert_ne!(
            signature(b"other", 1_700_000_000, br#"{"id":"evt_1"}"#),
            signature(b"whsec", 1_700_000_000, br#"{"id":"evt_1"}"#)
        );
    }
}
