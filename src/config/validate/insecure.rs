//! Channels that would put real money at risk: plain `http://` to a non-loopback host, and the
//! public sandbox TEST-ONLY keys (`config::sandbox_keys`) on a non-loopback `base_url`.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::Errors;
use crate::config::file::ChannelFile;
use crate::config::sandbox_keys::sandbox_key;
use crate::secret;

/// The host of an `http(s)://` URL: userinfo and port dropped, IPv6 brackets removed.
pub(super) fn url_host(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    if let Some(v6) = host_port.strip_prefix('[') {
        return v6.split(']').next();
    }
    Some(host_port.split(':').next().unwrap_or(""))
}

/// `localhost`, 127.0.0.0/8 or ::1 (also as an IPv4-mapped address).
pub(super) fn is_loopback(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Ok(v4) = host.parse::<Ipv4Addr>() {
        return v4.is_loopback();
    }
    if let Ok(v6) = host.parse::<Ipv6Addr>() {
        return v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback());
    }
    false
}

/// Refuses plain HTTP and sandbox keys unless `base_url` is a loopback host.
pub(super) fn check_channel(name: &str, c: &ChannelFile, base_url: &str, errs: &mut Errors) {
    let at = format!("channels.{name}");
    let Some(host) = url_host(base_url) else {
        return; // not http(s): reported by the channel's own checks
    };
    if is_loopback(host) {
        return;
    }
    if base_url.starts_with("http://") {
        errs.push(
            &format!("{at}.base_url"),
            format!(
                "{at}.base_url: {base_url:?} is plain http:// to a non-loopback host; it is refused \
                 (requests, keys' signatures and notifications would cross the network unencrypted): use https://"
            ),
        );
    }
    let mut keys: Vec<(String, &str)> = Vec::new();
    for (key, value) in [
        ("private_key", &c.private_key),
        ("wechatpay_public_key", &c.wechatpay_public_key),
        ("alipay_public_key", &c.alipay_public_key),
    ] {
        if let Some(v) = value {
            keys.push((key.to_string(), v));
        }
    }
    for (i, v) in c.platform_certificates.iter().enumerate() {
        keys.push((format!("platform_certificates[{i}]"), v));
    }
    for (key, value) in keys {
        // Unreadable or unparsable values are reported by the channel's own checks.
        let Ok(text) = secret::resolve(value) else {
            continue;
        };
        if let Some(k) = sandbox_key(&text) {
            errs.push(
                &format!("{at}.{key}"),
                format!(
                    "{at}.{key}: this is the public sandbox TEST-ONLY key ({}); it is refused for a \
                     non-loopback base_url ({host}): anyone can sign with it",
                    k.file
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_loopback() {
        for (url, host, lo) in [
            ("http://127.0.0.1:8090", "127.0.0.1", true),
            ("http://127.9.8.7/gateway.do", "127.9.8.7", true),
            ("https://localhost:8443/x", "localhost", true),
            ("http://LOCALHOST", "LOCALHOST", true),
            ("http://[::1]:8090/gateway.do", "::1", true),
            ("http://[::ffff:127.0.0.1]:80", "::ffff:127.0.0.1", true),
            ("http://user:pw@127.0.0.1:1", "127.0.0.1", true),
            (
                "https://api.mch.weixin.qq.com",
                "api.mch.weixin.qq.com",
                false,
            ),
            ("http://10.0.0.5:8090", "10.0.0.5", false),
            (
                "http://127.0.0.1.evil.example",
                "127.0.0.1.evil.example",
                false,
            ),
            (
                "http://localhost.evil.example/",
                "localhost.evil.example",
                false,
            ),
            ("http://127.0.0.1@evil.example/", "evil.example", false),
            ("http://[::2]/", "::2", false),
            ("http://0.0.0.0:8090", "0.0.0.0", false),
        ] {
            assert_eq!(url_host(url), Some(host), "{url}");
            assert_eq!(is_loopback(host), lo, "{url}");
        }
        assert_eq!(url_host("ftp://x"), None);
    }
}
