//! The YAML file as written by ops: plain serde structs, every one `deny_unknown_fields`
//! so that a typo is an error instead of a silent change of routing. Nothing here is
//! validated; see `config::validate` for the conversion into the runtime model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: ServerFile,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreFile>,
    #[serde(default)]
    pub shops: Vec<ShopFile>,
    #[serde(default)]
    pub merchants: BTreeMap<String, MerchantFile>,
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelFile>,
    #[serde(default)]
    pub routing: RoutingFile,
    #[serde(default)]
    pub limits: Vec<LimitFile>,
    /// Where `scope: global` limits are shared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<ReconcileFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<WebhooksFile>,
    /// What to do with a payment reported after its order ended: `refund` (the default) or
    /// `keep`; `merchants.<id>.late_payments` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_payments: Option<String>,
}

/// `reconcile:` — when open orders are asked about (ARCHITECTURE.md, "Money rules": the
/// reconciler's promise).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiers: Option<Vec<TierFile>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TierFile {
    pub until: String,
    pub every: String,
}

/// `webhooks:` — how shop events are delivered (ARCHITECTURE.md, "Shop events and webhooks").
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksFile {
    /// The waits after each failed delivery; after the last the event is dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_shop_concurrency: Option<usize>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: String,
    pub admin_listen: String,
    pub public_base_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFile>,
    /// How long a draining server waits for in-flight requests on shutdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<String>,
    /// A client must send its request head (or finish TLS) within this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_read_timeout: Option<String>,
    /// Connections served at once on each listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Requests handled at once on each listener; more are shed with `503`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    /// A request not answered by then gets `504 request_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert: String,
    pub key: String,
    /// Shops must present a client certificate from this CA (PEM, `file:`/`env:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub token: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShopFile {
    pub id: String,
    pub api_key: String,
    #[serde(default)]
    pub merchants: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookFile>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    pub url: String,
    pub secret: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MerchantFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wechat_sub_mchid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wechat_sub_appid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alipay_app_auth_token: Option<String>,
    /// The merchant's Alipay user id (`2088…`): what an ISV order is bound to, since a
    /// token refresh keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alipay_seller_id: Option<String>,
    /// This merchant's `late_payments` (`refund` or `keep`), over the top-level one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_payments: Option<String>,
}

/// One flat struct for every connector kind; validation rejects keys the kind does not use.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelFile {
    pub kind: String,
    pub mode: String,
    /// The merchants a direct-mode channel (a merchant's own account) serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchants: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    // wechatpay_v3
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mchid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sp_mchid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sp_appid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_no: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apiv3_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wechatpay_public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wechatpay_public_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platform_certificates: Vec<String>,
    // alipay
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alipay_public_key: Option<String>,
    // common
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fee_rate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<RateFile>,
    /// Bank limits per bound account, in fen: `{ daily, monthly, single }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaFile>,
}

/// `channels.<name>.quota`: each limit optional (at least one), a positive integer of fen.
/// Kept as written (any YAML value) so that a bad one is refused by name and key rather than
/// by a type error.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateFile {
    pub rate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthFile>,
    #[serde(default)]
    pub rules: Vec<RuleFile>,
    #[serde(default)]
    pub default: BTreeMap<String, String>,
}

/// `routing.health`, or a rule's `health` (which may set only the thresholds).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u32>,
    /// A ratio: `0.5` or `50%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eliminate_below: Option<String>,
    /// A share: `5%` or `0.05`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readmit_after: Option<u32>,
}

/// A rule's `choose`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChooseFile {
    pub from: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explore: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub name: String,
    #[serde(default)]
    pub when: WhenFile,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<SplitFile>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choose: Option<ChooseFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthFile>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WhenFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shop: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<AmountFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hours: Option<String>,
}

/// `merchant: m_1001` or `merchant: [m_1001, m_2002]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn values(&self) -> Vec<String> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(vs) => vs.clone(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmountFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitFile {
    pub to: String,
    pub weight: u32,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitFile {
    pub name: String,
    pub key: String,
    pub rate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// `local` (the default) or `global` (shared by every instance through `redis:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// `text` (the default) or `json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Filter directives, e.g. `info`; `RUST_LOG` overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    /// `redis://[:password@]host:port[/db]`, or `env:`/`file:`.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxFile {
    pub listen: String,
    /// Serve HTTPS with the test certificate in `config/sandbox/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFile>,
}
