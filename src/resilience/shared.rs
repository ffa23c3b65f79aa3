//! Limits shared by every payroute instance (`scope: global`): GCRA in Redis, one atomic Lua
//! script per request for all of its global limits, all-or-nothing like the local ones.
//!
//! # Limits
//! - **Fails open.** When Redis does not answer within [`REDIS_TIMEOUT`], the request passes
//!   (the local limiter in front still holds each instance to the rate), the gauge
//!   `payroute_shared_limits_up` turns 0 and a warning is logged at most once a minute. A
//!   limit is worth less than a sale; bindings and idempotency, which must never fail open,
//!   live in the store, not here.
//! - One standalone Redis (or a primary): the script touches several keys, so on a Redis
//!   Cluster they would have to share a hash slot. `rediss://` (TLS) is not built in.
//! - The clock is Redis's (`TIME`), so instances with skewed clocks agree.

use std::sync::Mutex;
use std::time::Duration;

use prometheus::IntGauge;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::secret::Secret;

/// How long a request waits for Redis before it passes without it.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// At most one "shared limits down" warning this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Where the shared limits live (config `redis:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[:password@]host:port[/db]`; may hold a password, so never printed.
    pub url: Secret,
    pub key_prefix: String,
}

/// Whether `url` is a Redis URL this client can use (nothing is connected).
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("redis://") || url.starts_with("unix://")) {
        return Err("must start with redis:// (or unix://); rediss:// is not built in".into());
    }
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| format!("not a Redis URL ({})", e.category()))
}

/// GCRA over several keys at once. Each key's value is its theoretical arrival time in
/// microseconds of Redis's clock; ARGV holds each key's emission interval and tolerance.
/// Returns `{0, 0}` when every key had a cell (and takes one of each), else the 1-based
/// index of the first refusing key and its wait in microseconds (taking none).
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local next_tat = {}
for i = 1, #KEYS do
  local emission = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local allow_at = tat - tolerance
  if allow_at > now then return {i, allow_at - now} end
  next_tat[i] = tat + emission
end
for i = 1, #KEYS do
  local ttl_ms = math.ceil((next_tat[i] - now) / 1000) + 1
  redis.call('SET', KEYS[i], string.format('%d', next_tat[i]), 'PX', ttl_ms)
end
return {0, 0}
";

/// One global limit a request must pass.
pub struct SharedCheck<'a> {
    pub limit: &'a str,
    pub key: &'a str,
    pub emission: Duration,
    pub tolerance: Duration,
}

pub struct SharedLimits {
    settings: RedisSettings,
    conn: ConnectionManager,
    script: redis::Script,
    up: IntGauge,
    last_warned: Mutex<Option<tokio::time::Instant>>,
}

/// Why the shared limits' Redis client could not be made. It names the error's category
/// only: redis's own text may quote the URL, and with it the password.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    #[error("redis.url: {0}")]
    Url(String),
    #[error("redis: {0}")]
    Client(String),
}

impl SharedLimits {
    /// Connects lazily: an unreachable Redis at start is the same as one lost later.
    pub fn new(settings: RedisSettings, up: IntGauge) -> Result<SharedLimits, RedisError> {
        let client = redis::Client::open(settings.url.expose())
            .map_err(|e| RedisError::Url(e.category().to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| RedisError::Client(e.category().to_string()))?;
        Ok(SharedLimits {
            settings,
            conn,
            script: redis::Script::new(GCRA_LUA),
            up,
            last_warned: Mutex::new(None),
        })
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// Takes one cell of every check, or none; `Err((index, wait))` names the first check
    /// that refused. Passes when Redis cannot be asked (see the module's `# Limits`).
    pub async fn admit_all(&self, checks: &[SharedCheck<'_>]) -> Result<(), (usize, Duration)> {
        if checks.is_empty() {
            return Ok(());
        }
        let mut invocation = self.script.prepare_invoke();
        for c in checks {
            invocation
                .key(format!(
                    "{}limit:{}:{}",
                    self.settings.key_prefix, c.limit, c.key
                ))
                .arg(micros(c.emission))
                .arg(micros(c.tolerance));
        }
        let mut conn = self.conn.clone();
        let answer = tokio::time::timeout(
            REDIS_TIMEOUT,
            invocation.invoke_async::<(i64, i64)>(&mut conn),
        )
        .await;
        match answer {
            Ok(Ok((0, _))) => {
                self.up.set(1);
                Ok(())
            }
            Ok(Ok((i, wait_us))) => {
                self.up.set(1);
                let index = usize::try_from(i - 1).unwrap_or(0).min(checks.len() - 1);
                Err((index, Duration::from_micros(wait_us.max(0) as u64)))
            }
            Ok(Err(e)) => {
                self.down(e.category());
                Ok(())
            }
            Err(_) => {
                self.down(&format!("no answer within {REDIS_TIMEOUT:?}"));
                Ok(())
            }
        }
    }

    fn down(&self, why: &str) {
        self.up.set(0);
        let now = tokio::time::Instant::now();
        let mut last = self.last_warned.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
            *last = Some(now);
            tracing::warn!(
                error = why,
                "shared limits down: Redis does not answer; global limits pass (fail open), local limits still hold"
            );
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
