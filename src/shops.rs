//! The shop directory: shop backends, their API keys, the merchants each may act for, and
//! their webhooks. Below the API, so config, notifications and the outbox can use it too.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::secret::{sha256, Secret};

/// A shop backend allowed to call the API (config `shops:`).
#[derive(Debug)]
pub struct Shop {
    pub id: String,
    pub api_key: Secret,
    /// The merchants this shop may act for.
    pub merchants: HashSet<String>,
    pub webhook: Option<Webhook>,
}

#[derive(Clone, Debug)]
pub struct Webhook {
    pub url: String,
    pub secret: Secret,
}

/// Shops by the SHA-256 of their API key: a lookup that reveals nothing usable about other
/// keys through timing, without comparing against every shop's key.
#[derive(Debug, Default)]
pub struct ShopDirectory {
    by_key: HashMap<[u8; 32], Arc<Shop>>,
    by_id: HashMap<String, Arc<Shop>>,
}

impl ShopDirectory {
    pub fn new(shops: Vec<Shop>) -> ShopDirectory {
        let shops: Vec<Arc<Shop>> = shops.into_iter().map(Arc::new).collect();
        let by_key = shops
            .iter()
            .map(|s| (sha256(s.api_key.expose()), s.clone()))
            .collect();
        let by_id = shops.into_iter().map(|s| (s.id.clone(), s)).collect();
        ShopDirectory { by_key, by_id }
    }

    /// The shop called `id` (whose webhook an event goes to).
    pub fn get(&self, id: &str) -> Option<&Arc<Shop>> {
        self.by_id.get(id)
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Every shop's id (metric labels start at 0 for each).
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.by_id.keys().map(String::as_str)
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
        self.by_key.get(&sha256(key)).cloned()
    }
}
