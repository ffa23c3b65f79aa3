//! Shops and their API keys.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::secret::Secret;

/// A shop backend allowed to call the API (config `shops:`).
#[derive(Debug)]
pub struct Shop {
    pub id: String,
    pub api_key: Secret,
    /// The merchants this shop may act for.
    pub merchants: HashSet<String>,
    pub webhook: Option<Webhook>,
}

#[derive(Debug)]
pub struct Webhook {
    pub url: String,
    pub secret: Secret,
}

/// Shops by the SHA-256 of their API key: a lookup that reveals nothing usable about other
/// keys through timing, without comparing against every shop's key.
#[derive(Debug, Default)]
pub struct ShopDirectory {
    by_key: HashMap<[u8; 32], Arc<Shop>>,
}

impl ShopDirectory {
    pub fn new(shops: Vec<Shop>) -> ShopDirectory {
        let by_key = shops
            .into_iter()
            .map(|s| (digest(s.api_key.expose()), Arc::new(s)))
            .collect();
        ShopDirectory { by_key }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The shop for an `Authorization` header value, if it is `Bearer <known key>`.
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<Arc<Shop>> {
        let key = authorization?.strip_prefix("Bearer ")?.trim();
        if key.is_empty() {
            return None;
        }
        self.by_key.get(&digest(key)).cloned()
    }
}

fn digest(key: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Constant-time comparison for a bearer token against one expected value (admin token).
pub fn token_matches(authorization: Option<&str>, expected: &Secret) -> bool {
    let Some(given) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    // Compare digests so that neither length nor content leaks through timing.
    let (a, b) = (digest(given.trim()), digest(expected.expose()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}
