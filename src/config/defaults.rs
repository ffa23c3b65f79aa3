//! Every default (and every bound) the config applies, named once. Other modules may use
//! these instead of writing the numbers again; DESIGN.md §5 documents the defaults.

use std::time::Duration;

/// `payroute serve|check|explain --config` when none is given.
pub const DEFAULT_CONFIG_PATH: &str = "config/payroute.yaml";

/// `server.max_body_bytes` when absent: 64 KiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// The smallest `server.max_body_bytes` accepted.
pub const MIN_MAX_BODY_BYTES: usize = 1024;
/// The largest `server.max_body_bytes` accepted: 16 MiB.
pub const MAX_MAX_BODY_BYTES: usize = 16 << 20;

/// `server.drain_timeout` when absent: how long shutdown waits for in-flight requests.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// `store` when absent, and `store.path` of `kind: sqlite` when absent.
pub const DEFAULT_STORE_PATH: &str = "data/payroute.db";

/// `store.pool_size` of `kind: postgres` when absent: connections per instance.
pub const DEFAULT_PG_POOL_SIZE: u32 = 16;
/// The largest `store.pool_size` accepted (PostgreSQL's own `max_connections` is 100 by
/// default, shared by every instance).
pub const MAX_PG_POOL_SIZE: u32 = 1000;
/// `store.lease` of `kind: postgres` when absent (the store's own default).
pub const DEFAULT_PG_LEASE: Duration = crate::store::postgres::DEFAULT_LEASE;
/// The shortest `store.lease` accepted.
pub const MIN_PG_LEASE: Duration = Duration::from_secs(1);
/// How much longer than the longest webhook or channel `timeout` `store.lease` must be: the
/// work's outcome is recorded after it, and that write may wait this long for a connection.
pub const PG_LEASE_MARGIN: Duration = Duration::from_secs(5);
/// `store.schema` of `kind: postgres` when absent.
pub const DEFAULT_PG_SCHEMA: &str = "payroute";

/// The shortest `admin.token` accepted, in characters.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;
/// The shortest `shops[].api_key` accepted, in characters.
pub const MIN_SHOP_API_KEY_LEN: usize = 16;

/// A channel's `timeout` when absent: one deadline per call, retries included.
pub const DEFAULT_CHANNEL_TIMEOUT: Duration = Duration::from_secs(5);
/// The shortest channel `timeout` accepted.
pub const MIN_CHANNEL_TIMEOUT: Duration = Duration::from_millis(50);
/// The longest channel `timeout` accepted.
pub const MAX_CHANNEL_TIMEOUT: Duration = Duration::from_secs(60);

/// A `wechatpay_v3` channel's `base_url` when absent: WeChat Pay's production API.
pub const DEFAULT_WECHATPAY_BASE_URL: &str = "https://api.mch.weixin.qq.com";
/// An `alipay` channel's `base_url` when absent: Alipay's classic production gateway.
pub const DEFAULT_ALIPAY_BASE_URL: &str = "https://openapi.alipay.com/gateway.do";
/// WeChat Pay's APIv3 key (AEAD_AES_256_GCM): exactly this many bytes.
pub const WECHAT_APIV3_KEY_LEN: usize = 32;

/// How long the config watcher waits for quiet after a change before reloading (a save is
/// often several events: truncate, write, rename).
pub const RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    /// Error messages print the bounds; they must read as ops write them.
    #[test]
    fn bounds_print_as_written() {
        assert_eq!(format!("{MIN_CHANNEL_TIMEOUT:?}"), "50ms");
        assert_eq!(format!("{MAX_CHANNEL_TIMEOUT:?}"), "60s");
        assert_eq!(DEFAULT_MAX_BODY_BYTES, 65_536);
        assert_eq!(MAX_MAX_BODY_BYTES, 16_777_216);
    }
}
