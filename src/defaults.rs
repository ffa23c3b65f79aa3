//! Every default (and every bound) a setting has — the config file's keys and the CLI's
//! flags — named once, here and nowhere else; the README documents them. Modules use these
//! names rather than writing the values again. This module imports nothing from the crate, so
//! any layer may use it (the config validates against it, and the server, store, logging and
//! workers fill their own `Default`s from it) without an import cycle. A request's own
//! defaults (a payment's `expires_at`) stay with the API code that applies them.

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
/// How long a listener that has no `drain_timeout` of its own drains: the sandbox's, and the
/// test and benchmark receivers'. Not `server.drain_timeout`: nothing configures these, and
/// a simulated provider has no payments of its own to finish.
pub const UNCONFIGURED_LISTENER_DRAIN: Duration = Duration::from_secs(5);
/// `server.header_read_timeout` when absent. A client that has not sent its request head (or
/// finished its TLS handshake) by then is disconnected: slow clients cannot hold connections
/// open.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// `server.max_connections` when absent: connections served at once per listener; more wait
/// in the kernel's backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// `server.max_in_flight` when absent: requests handled at once per listener; one more is
/// refused at once (`503` with `Retry-After`) rather than queued, so a burst cannot grow
/// latency and memory without bound.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1_024;
/// `server.request_timeout` when absent: a request not answered by then gets `504`; its work
/// goes on. Above the longest channel deadline a create can spend (its own call, a query, a
/// fallback's call).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `payroute sandbox --listen` when absent.
pub const DEFAULT_SANDBOX_LISTEN: &str = "127.0.0.1:8090";

/// `store` when absent, and `store.path` of `kind: sqlite` when absent.
pub const DEFAULT_STORE_PATH: &str = "data/payroute.db";

/// `store.pool_size` of `kind: postgres` when absent: connections per instance.
pub const DEFAULT_PG_POOL_SIZE: u32 = 16;
/// The largest `store.pool_size` accepted (PostgreSQL's own `max_connections` is 100 by
/// default, shared by every instance).
pub const MAX_PG_POOL_SIZE: u32 = 1000;
/// `store.lease` of `kind: postgres` when absent, and the store's own when none is given:
/// how long an instance holds an event or a check it claimed before another may take it.
/// Longer than a webhook delivery (`webhooks.timeout`) or a channel call with its retries (a
/// channel `timeout`, at most 60s) takes — config validation holds it to that — and short
/// enough that a dead instance's work is not held up for long.
pub const DEFAULT_PG_LEASE: Duration = Duration::from_secs(120);
/// The shortest `store.lease` accepted.
pub const MIN_PG_LEASE: Duration = Duration::from_secs(1);
/// How much longer than the longest webhook or channel `timeout` `store.lease` must be: the
/// work's outcome is recorded after it, and that write may wait this long for a connection.
pub const PG_LEASE_MARGIN: Duration = Duration::from_secs(5);
/// `store.schema` of `kind: postgres` when absent.
pub const DEFAULT_PG_SCHEMA: &str = "payroute";
/// Connections `payroute store migrate --from sqlite:… --to …` opens to PostgreSQL: the copy
/// writes one record at a time, so a few are plenty.
pub const COPY_PG_POOL_SIZE: u32 = 4;

/// `redis.key_prefix` when absent.
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "payroute:";

/// `log.level` when neither it nor `RUST_LOG` is set.
pub const DEFAULT_LOG_LEVEL: &str = "info";

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

/// `webhooks.schedule` when absent: WeChat Pay's own notification schedule, the wait after
/// each failed delivery; after the last, the event is `dead`.
pub const DEFAULT_WEBHOOK_SCHEDULE: [Duration; 15] = [
    Duration::from_secs(15),
    Duration::from_secs(15),
    Duration::from_secs(30),
    Duration::from_secs(3 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(20 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(60 * 60),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(6 * 3600),
    Duration::from_secs(6 * 3600),
];
/// `webhooks.timeout` when absent: one delivery attempt's deadline.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// `webhooks.per_shop_concurrency` when absent: deliveries in flight to one shop at a time.
pub const DEFAULT_PER_SHOP_CONCURRENCY: usize = 4;

/// `reconcile.tiers` when absent, as `(until, every)`: until an order is `until` old, check
/// it every `every` — every minute at 1–10 minutes, every 10 minutes until an hour, hourly
/// until a day.
pub const DEFAULT_RECONCILE_TIERS: [(Duration, Duration); 3] = [
    (Duration::from_secs(10 * 60), Duration::from_secs(60)),
    (Duration::from_secs(3600), Duration::from_secs(10 * 60)),
    (Duration::from_secs(24 * 3600), Duration::from_secs(3600)),
];
/// `reconcile.concurrency` when absent: orders asked about at once.
pub const DEFAULT_RECONCILE_CONCURRENCY: usize = 8;

/// How often each instance reloads the drained channels (`POST /admin/channels/{name}/drain`)
/// from the store: another instance's drain or resume is in force here within this time.
/// One small read per instance per period.
pub const DRAIN_REFRESH: Duration = Duration::from_secs(2);
/// The longest drain `reason` accepted, in characters: a line in the log and the console.
pub const MAX_DRAIN_REASON_CHARS: usize = 200;
/// The longest operator name (`by`, `X-Payroute-Operator`) accepted, in characters.
pub const MAX_DRAIN_OPERATOR_CHARS: usize = 100;

/// How long the config watcher waits for quiet after a change before reloading (a save is
/// often several events: truncate, write, rename).
pub const RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);

// `routing.health` (DESIGN §13). The window counts create attempts, retries included.
/// How many of a channel's latest create attempts its health window holds.
pub const HEALTH_WINDOW: u32 = 200;
/// Largest `routing.health.window` accepted (the window is a ring of that many outcomes).
pub const MAX_HEALTH_WINDOW: u32 = 100_000;
/// Fewer outcomes than this: the channel is not judged.
pub const HEALTH_MIN_SAMPLES: u32 = 20;
/// Success ratio (ppm) below which a judged channel is eliminated: 0.5.
pub const HEALTH_ELIMINATE_BELOW_PPM: u32 = 500_000;
/// Share (ppm) of new orders still sent to an eliminated channel: 5%.
pub const HEALTH_PROBE_PPM: u32 = 50_000;
/// Consecutive successful probes that readmit an eliminated channel with a fresh window.
pub const HEALTH_READMIT_AFTER: u32 = 3;
/// `choose`'s default exploration share (ppm): 5%.
pub const CHOOSE_EXPLORE_PPM: u32 = 50_000;
/// Conversion (paid ÷ created) is measured over this many one-minute buckets: an hour.
pub const CONVERSION_MINUTES: usize = 60;

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
