//! Test harness: the real proxy on listeners it binds itself (127.0.0.1:0) with a real
//! SQLite file (or a fresh PostgreSQL schema: [`Harness::start_on_postgres`]), the sandbox provider on its own socket as the upstream, a small HTTP client,
//! builders for channel YAML, and deadlines for every wait.
#![allow(dead_code)]

pub mod disk;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use payroute::app::{Listeners, Running};
use payroute::config::Config;
use payroute::sandbox::Sandbox;
use serde_json::Value;
use tokio::net::TcpListener;

pub const SHOP_KEY: &str = "test-shop-key-0123456789";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const WEBHOOK_SECRET: &str = "test-webhook-secret-0123456789";
/// `peer-shop`'s key: a second shop acting for `m_1001` beside `test-shop`.
pub const PEER_SHOP_KEY: &str = "peer-shop-key-0123456789";

/// One request the shop's webhook receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub raw: String,
    pub body: Value,
    pub signature: String,
    /// Its `X-Request-Id` header, if any.
    pub request_id: Option<String>,
    /// What the receiver answered.
    pub status: u16,
}

impl Received {
    /// `Payroute-Signature` is `t=<unix>,v1=<HMAC-SHA256(secret, "<t>.<raw body>")>`: checked
    /// here the way a shop would, from the header alone.
    pub fn signature_verifies(&self) -> bool {
        let Some((t, _)) = self
            .signature
            .strip_prefix("t=")
            .and_then(|rest| rest.split_once(','))
        else {
            return false;
        };
        let Ok(t) = t.parse::<i64>() else {
            return false;
        };
        payroute::notify::signature(WEBHOOK_SECRET.as_bytes(), t, self.raw.as_bytes())
            == self.signature
    }
}

/// A shop's webhook endpoint on 127.0.0.1:0 that records every request and answers with a
/// status the test sets (200 unless told otherwise).
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    got: Arc<std::sync::Mutex<Vec<Received>>>,
    answer: Arc<std::sync::atomic::AtomicU16>,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Requests that arrived, answered or not yet.
    arrived: Arc<std::sync::atomic::AtomicUsize>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/payroute/events", listener.local_addr().unwrap());
        let rx = Receiver {
            url,
            got: Arc::default(),
            answer: Arc::new(std::sync::atomic::AtomicU16::new(200)),
            delay_ms: Arc::default(),
            arrived: Arc::default(),
        };
        let me = rx.clone();
        let handler = move |req: Request<hyper::body::Incoming>, _peer| {
            let me = me.clone();
            async move {
                let signature = req
                    .headers()
                    .get("payroute-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let request_id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let raw = req.into_body().collect().await.unwrap().to_bytes();
                let raw = String::from_utf8_lossy(&raw).into_owned();
                me.arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // The answer is decided on arrival: a stalled request answered later is not
                // counted as accepted because the shop came back meanwhile.
                let status = me.answer.load(std::sync::atomic::Ordering::SeqCst);
                let delay = me.delay_ms.load(std::sync::atomic::Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                me.got.lock().unwrap().push(Received {
                    body: serde_json::from_str(&raw).unwrap_or(Value::Null),
                    raw,
                    signature,
                    request_id,
                    status,
                });
                let mut resp = http::Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                resp
            }
        };
        tokio::spawn(payroute::server::serve(
            listener,
            None,
            handler,
            std::future::pending(),
            Default::default(),
            std::sync::Arc::new(payroute::api::error::refusal),
        ));
        rx
    }

    /// From now on answer every delivery that arrives with `status` (500: the shop is down).
    pub fn answer_with(&self, status: u16) {
        self.answer
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now on answer each delivery only after `ms` (a slow shop).
    pub fn answer_after(&self, ms: u64) {
        self.delay_ms.store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many requests arrived so far, answered or still held by [`Receiver::answer_after`].
    pub fn arrivals(&self) -> usize {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every request answered so far.
    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The events the receiver accepted (answered 2xx), in arrival order.
    pub fn accepted(&self) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .map(|r| r.body)
            .collect()
    }

    /// How many events of `kind` for the order `out_trade_no` the shop accepted so far.
    pub fn told(&self, kind: &str, out_trade_no: &str) -> usize {
        self.accepted()
            .into_iter()
            .filter(|e| e["type"] == kind && e["data"]["out_trade_no"] == out_trade_no)
            .count()
    }

    /// Waits (with the test deadline) until `accepted()` holds an event of `kind` for the
    /// order `out_trade_no`; returns it.
    pub async fn event(&self, kind: &str, out_trade_no: &str) -> Value {
        let found = || {
            self.accepted()
                .into_iter()
                .find(|e| e["type"] == kind && e["data"]["out_trade_no"] == out_trade_no)
        };
        wait_until(&format!("a {kind} event for {out_trade_no}"), || async {
            found().is_some()
        })
        .await;
        found().unwrap()
    }
}

pub fn keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sandbox")
}

pub fn key(name: &str) -> String {
    keys_dir().join(name).display().to_string()
}

/// Where the sandbox listens and how channels reach it.
#[derive(Clone)]
pub struct Upstream {
    pub base_url: String,
    pub ca_file: Option<String>,
}

impl Upstream {
    /// An address reached without a custom CA (a dead port, or a TLS server not trusted).
    pub fn plain(base_url: &str) -> Upstream {
        Upstream {
            base_url: base_url.to_string(),
            ca_file: None,
        }
    }

    /// `http://127.0.0.1:<port>` of a port nothing listens on: connections are refused.
    pub fn dead() -> Upstream {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Upstream::plain(&format!("http://127.0.0.1:{port}"))
    }
}

/// One channel's YAML block under `channels:`; `Display` renders it (leading newline, two
/// spaces of indent), so blocks concatenate into an `extra_channels` string.
#[derive(Clone, Debug)]
pub struct ChannelYaml {
    pub name: String,
    fields: Vec<(String, String)>,
}

impl ChannelYaml {
    pub fn new(name: &str) -> ChannelYaml {
        ChannelYaml {
            name: name.to_string(),
            fields: Vec::new(),
        }
    }

    /// Sets `key: value` (replacing an earlier value of `key`); `value` is YAML as written.
    pub fn with(mut self, key: &str, value: impl fmt::Display) -> ChannelYaml {
        let value = value.to_string();
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some(f) => f.1 = value,
            None => self.fields.push((key.to_string(), value)),
        }
        self
    }

    /// Drops `key`.
    pub fn without(mut self, key: &str) -> ChannelYaml {
        self.fields.retain(|(k, _)| k != key);
        self
    }

    fn upstream(self, up: &Upstream, path: &str) -> ChannelYaml {
        let me = self.with("base_url", format!("{}{path}", up.base_url));
        match &up.ca_file {
            Some(ca) => me.with("ca_file", ca),
            None => me,
        }
    }
}

impl fmt::Display for ChannelYaml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\n  {}:", self.name)?;
        for (k, v) in &self.fields {
            write!(f, "\n    {k}: {v}")?;
        }
        Ok(())
    }
}
/// The test merchants' own provider accounts: (merchant, WeChat Pay mchid — also its
/// `wechat_sub_mchid` under the platform —, its own Alipay app_id).
const OWN_ACCOUNTS: &[(&str, &str, &str)] = &[
    ("m_1001", "1900000109", "2021000000001001"),
    ("m_2002", "1900000209", "2021000000002002"),
    ("m_3003", "1900000309", "2021000000003003"),
    ("m_4004", "1900000409", "2021000000004004"),
    ("m_9009", "1900000909", "2021000000009009"),
];

/// `merchants: [..]` of a direct channel: the test merchant whose own account `id` (a mchid
/// or an Alipay app_id) is. Without one the channel has no owners and config refuses it,
/// which says what to add; a test routing other merchants there sets
/// `.with("merchants", ..)` itself.
fn owned_by(c: ChannelYaml, id: &str) -> ChannelYaml {
    match OWN_ACCOUNTS
        .iter()
        .find(|(_, mchid, app_id)| *mchid == id || *app_id == id)
    {
        Some((merchant, _, _)) => c.with("merchants", format!("[{merchant}]")),
        None => c,
    }
}

/// A WeChat Pay direct-merchant channel on `up`, verifying with the sandbox's public key,
/// owned by the test merchant whose mchid it is.
pub fn wechat_direct(
    up: &Upstream,
    name: &str,
    mchid: &str,
    appid: &str,
    serial_no: &str,
    keyfile: &str,
) -> ChannelYaml {
    let c = wechat(
        up,
        name,
        ("direct", "mchid", "appid"),
        (mchid, appid),
        serial_no,
        keyfile,
    );
    owned_by(c, mchid)
}

/// A WeChat Pay service-provider (partner) channel on `up`, verifying with the sandbox's
/// public key.
pub fn wechat_partner(
    up: &Upstream,
    name: &str,
    sp_mchid: &str,
    sp_appid: &str,
    serial_no: &str,
    keyfile: &str,
) -> ChannelYaml {
    wechat(
        up,
        name,
        ("partner", "sp_mchid", "sp_appid"),
        (sp_mchid, sp_appid),
        serial_no,
        keyfile,
    )
}

/// A WeChat Pay channel in `mode`, whose merchant and app ids go under the given keys.
fn wechat(
    up: &Upstream,
    name: &str,
    (mode, mchid_key, appid_key): (&str, &str, &str),
    (mchid, appid): (&str, &str),
    serial_no: &str,
    keyfile: &str,
) -> ChannelYaml {
    ChannelYaml::new(name)
        .with("kind", "wechatpay_v3")
        .with("mode", mode)
        .upstream(up, "")
        .with(mchid_key, format!("{mchid:?}"))
        .with(appid_key, appid)
        .with("serial_no", serial_no)
        .with("private_key", format!("file:{}", key(keyfile)))
        .with(
            "wechatpay_public_key",
            format!("file:{}", key("wechatpay_pub_key.pem")),
        )
        .with("wechatpay_public_key_id", "PUB_KEY_ID_SANDBOX_TEST_ONLY")
        .with("apiv3_key", apiv3_key(mchid))
}

/// The TEST-ONLY APIv3 key (32 bytes) of a test merchant: decrypts its notifications.
pub fn apiv3_key(mchid: &str) -> String {
    format!("{:0<32}", format!("apiv3-{mchid}-TEST-ONLY"))
}

/// An Alipay channel (`mode`: `direct` or `isv`) on `up`'s gateway; a direct one is owned
/// by the test merchant whose app it is.
pub fn alipay_channel(
    up: &Upstream,
    name: &str,
    mode: &str,
    app_id: &str,
    keyfile: &str,
) -> ChannelYaml {
    let c = ChannelYaml::new(name)
        .with("kind", "alipay")
        .with("mode", mode)
        .upstream(up, "/gateway.do")
        .with("app_id", format!("{app_id:?}"))
        .with("private_key", format!("file:{}", key(keyfile)))
        .with(
            "alipay_public_key",
            format!("file:{}", key("alipay_sandbox_pub_key.pem")),
        );
    match mode {
        "direct" => owned_by(c, app_id),
        _ => c,
    }
}

/// The standard channels' fee and deadline.
fn standard(c: ChannelYaml, fee_rate: &str) -> ChannelYaml {
    c.with("fee_rate", fee_rate).with("timeout", "2s")
}

/// The deadline of one wait in a test: long enough for a slow shared machine, short enough
/// that a bug fails the test instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(30);

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
#[track_caller]
pub fn within<T>(what: &str, fut: impl Future<Output = T>) -> impl Future<Output = T> {
    let what = what.to_string();
    let caller = std::panic::Location::caller();
    async move {
        match tokio::time::timeout(WAIT, fut).await {
            Ok(v) => v,
            Err(_) => panic!("timed out after {WAIT:?} waiting for {what} ({caller})"),
        }
    }
}

/// Polls `check` until it is true, failing the test after [`WAIT`].
#[track_caller]
pub fn wait_until<F, Fut>(what: &str, mut check: F) -> impl Future<Output = ()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async move {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

/// The standard test routing (like the shipped config).
pub const RULES: &str = r#"
  rules:
    - name: m1001-own-wechat
      when: { merchant: [m_1001], method: [wechat_jsapi, wechat_native] }
      to: m1001_wechat
      fallback: [platform_wechat]
    - name: m2002-wechat-canary
      when: { merchant: m_2002, family: wechat }
      split: [ { to: m2002_wechat, weight: 10 }, { to: platform_wechat, weight: 90 } ]
    - name: m3003-small-amounts-first
      when: { merchant: m_3003, amount: { max: 100 } }
      to: m3003_wechat
    - name: promotions-on-platform
      when: { metadata: { campaign: [double11, "618"] }, family: wechat }
      to: platform_wechat
  default: { wechat: platform_wechat }
"#;

/// Both families, each with a merchant on its own channel (use with [`Harness::start_alipay`]).
pub const MIXED_RULES: &str = r#"
  rules:
    - name: m2002-own-alipay
      when: { merchant: m_2002, family: alipay }
      to: m2002_alipay
    - name: m1001-own-wechat
      when: { merchant: [m_1001], method: [wechat_native] }
      to: m1001_wechat
  default: { wechat: platform_wechat, alipay: platform_alipay }
"#;

/// The demo Alipay channels on the sandbox's gateway: `platform_alipay` (ISV) and
/// `m2002_alipay` (direct).
pub fn alipay_channels(up: &Upstream) -> String {
    let platform = alipay_channel(
        up,
        "platform_alipay",
        "isv",
        "2021000000000001",
        "platform_alipay_app_key.pem",
    );
    let m2002 = alipay_channel(
        up,
        "m2002_alipay",
        "direct",
        "2021000000002002",
        "m2002_alipay_app_key.pem",
    );
    format!(
        "{}{}",
        standard(platform, "0.006"),
        standard(m2002, "0.006")
    )
}

/// A whole config file; `rules` is the body of `routing:`, `extra_channels` is appended
/// under `channels:`.
/// Where the proxy can be reached and where it tells the shop: written into the config.
#[derive(Clone, Debug)]
pub struct Site {
    /// `server.public_base_url`: providers send notifications to `{this}/notify/{channel}`.
    pub public_base_url: String,
    pub webhook_url: String,
}

pub fn config_yaml(
    up: &Upstream,
    store: &str,
    site: &Site,
    rules: &str,
    extra_channels: &str,
) -> String {
    let webhook_url = &site.webhook_url;
    let direct = |name: &str, mchid: &str, appid: &str, serial: &str, keyfile: &str| {
        standard(
            wechat_direct(up, name, mchid, appid, serial, keyfile),
            "0.0038",
        )
    };
    let platform = standard(
        wechat_partner(
            up,
            "platform_wechat",
            "1900000100",
            "wx8888888888888888",
            "5157F09EFDC096DE15EBE81A47057A72",
            "platform_apiclient_key.pem",
        ),
        "0.006",
    );
    format!(
        r#"
server:
  listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:0
  public_base_url: {public_base_url}
  max_body_bytes: 65536
  drain_timeout: 5s
admin: {{ token: {ADMIN_TOKEN} }}
store: {store}
shops:
  - id: test-shop
    api_key: {SHOP_KEY}
    merchants: [m_1001, m_2002, m_3003, m_4004]
    webhook: {{ url: "{webhook_url}", secret: {WEBHOOK_SECRET} }}
  - id: other-shop
    api_key: other-shop-key-0123456789
    merchants: [m_9009]
    webhook: {{ url: "{webhook_url}", secret: {WEBHOOK_SECRET} }}
  - id: peer-shop
    api_key: {PEER_SHOP_KEY}
    merchants: [m_1001]
    webhook: {{ url: "{webhook_url}", secret: {WEBHOOK_SECRET} }}
merchants:
  m_1001: {{ wechat_sub_mchid: "1900000109", alipay_app_auth_token: tok_m_1001_TEST_ONLY, alipay_seller_id: "2088000000001001" }}
  m_2002: {{ wechat_sub_mchid: "1900000209", alipay_app_auth_token: tok_m_2002_TEST_ONLY, alipay_seller_id: "2088000000002002" }}
  m_3003: {{ wechat_sub_mchid: "1900000309", alipay_app_auth_token: tok_m_3003_TEST_ONLY, alipay_seller_id: "2088000000003003" }}
  m_4004: {{ wechat_sub_mchid: "1900000409", alipay_app_auth_token: tok_m_4004_TEST_ONLY, alipay_seller_id: "2088000000004004" }}
  m_9009: {{ wechat_sub_mchid: "1900000909", alipay_app_auth_token: tok_m_9009_TEST_ONLY, alipay_seller_id: "2088000000009009" }}
channels:{platform}{m1001}{m2002}{m3003}
{extra_channels}
routing:
{rules}
"#,
        public_base_url = site.public_base_url,
        m1001 = direct(
            "m1001_wechat",
            "1900000109",
            "wx2421b1c4370ec43b",
            "3775B6A45ACD588826D15E583A95F5DD",
            "m1001_apiclient_key.pem"
        ),
        m2002 = direct(
            "m2002_wechat",
            "1900000209",
            "wx3a2b1c4d5e6f7a8b",
            "1DDE55AD98ED71D6EDD4A4A16996DE7B",
            "m2002_apiclient_key.pem"
        ),
        m3003 = direct(
            "m3003_wechat",
            "1900000309",
            "wx9f8e7d6c5b4a3f2e",
            "6B1E2B1C7A0E8D5F4C3B2A1908F7E6D5",
            "m3003_apiclient_key.pem"
        ),
    )
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub running: Option<Running>,
    pub sandbox: Arc<Sandbox>,
    pub upstream: Upstream,
    /// The shop's webhook receiver (both test shops post here).
    pub receiver: Receiver,
    pub site: Site,
    pub api: String,
    pub admin: String,
    pub sandbox_url: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    /// The config's `store:` value.
    store: String,
    /// The PostgreSQL schema the proxy runs on, dropped with the harness.
    pub pg: Option<PgSchema>,
}

/// How [`Harness::start_on_postgres_opts`] starts.
pub struct PgOptions<'a> {
    /// Rules (and top-level keys after them).
    pub rules: &'a str,
    /// The url the proxy connects to instead of the test database's (e.g. a forwarder).
    pub url: Option<String>,
    /// More keys of `store:`, each starting with `, ` (e.g. `", lease: 2s"`).
    pub store_extra: &'a str,
    /// `server.public_base_url` instead of the harness proxy's own API address (so providers'
    /// notifications go to another instance).
    pub public_base_url: Option<String>,
}

impl Default for PgOptions<'_> {
    fn default() -> Self {
        PgOptions {
            rules: RULES,
            url: None,
            store_extra: "",
            public_base_url: None,
        }
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// Asserts a unified-API error: HTTP status and `error.code`.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> &Reply {
        assert_eq!(
            (self.status, self.body["error"]["code"].as_str()),
            (status, Some(code)),
            "{}",
            self.text
        );
        self
    }

    /// Asserts a 201 whose payment went to `channel`.
    #[track_caller]
    pub fn expect_created_on(&self, channel: &str) -> &Reply {
        assert_eq!(
            (self.status, self.body["channel"].as_str()),
            (201, Some(channel)),
            "{}",
            self.text
        );
        self
    }

    /// The error message, for checks on what it names.
    pub fn error_message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

impl Harness {
    /// Proxy + sandbox over plain HTTP with the standard rules.
    pub async fn start() -> Harness {
        Harness::start_with(false, RULES, "").await
    }

    /// With the Alipay channels of [`alipay_channels`] and rules that name them.
    pub async fn start_alipay(rules: &str) -> Harness {
        Harness::start_inner(false, rules, &|up| alipay_channels(up)).await
    }

    pub async fn start_with(tls: bool, rules: &str, extra_channels: &str) -> Harness {
        Harness::start_inner(tls, rules, &|_| extra_channels.to_string()).await
    }

    /// [`Harness::start`] on a fresh PostgreSQL schema; `None` (after saying so loudly) when
    /// PostgreSQL is not reachable and `PAYROUTE_REQUIRE_PG=1` is not set.
    pub async fn start_on_postgres() -> Option<Harness> {
        Harness::start_on_postgres_with(RULES).await
    }

    /// [`Harness::start_on_postgres`] with other rules (and top-level keys after them).
    pub async fn start_on_postgres_with(rules: &str) -> Option<Harness> {
        Harness::start_on_postgres_at(rules, None).await
    }

    /// [`Harness::start_on_postgres_with`], the proxy connecting to `url` (e.g. through a
    /// [`PgForwarder`]) instead of the test database's url.
    pub async fn start_on_postgres_at(rules: &str, url: Option<String>) -> Option<Harness> {
        Harness::start_on_postgres_opts(PgOptions {
            rules,
            url,
            ..PgOptions::default()
        })
        .await
    }

    /// [`Harness::start_on_postgres`] with every option.
    pub async fn start_on_postgres_opts(o: PgOptions<'_>) -> Option<Harness> {
        let pg = PgSchema::create("payroute_e2e_").await?;
        let store = format!(
            "{{ kind: postgres, url: \"{}\", pool_size: 8, schema: {}{} }}",
            o.url.as_deref().unwrap_or(&pg.url),
            pg.name,
            o.store_extra,
        );
        let mut h = Harness::start_inner_on(
            false,
            o.rules,
            &|_| String::new(),
            Some(store),
            o.public_base_url,
        )
        .await;
        h.pg = Some(pg);
        Some(h)
    }

    async fn start_inner(tls: bool, rules: &str, extra: &dyn Fn(&Upstream) -> String) -> Harness {
        Harness::start_inner_on(tls, rules, extra, None, None).await
    }

    async fn start_inner_on(
        tls: bool,
        rules: &str,
        extra: &dyn Fn(&Upstream) -> String,
        store: Option<String>,
        public_base_url: Option<String>,
    ) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = store.unwrap_or_else(|| {
            format!(
                "{{ kind: sqlite, path: {} }}",
                dir.path().join("payroute.db").display()
            )
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = if tls {
            let ca = dir.path().join("ca.pem");
            std::fs::write(&ca, payroute::sandbox::TLS_CA_PEM).unwrap();
            Upstream {
                base_url: format!("https://localhost:{port}"),
                ca_file: Some(ca.display().to_string()),
            }
        } else {
            Upstream {
                base_url: format!("http://127.0.0.1:{port}"),
                ca_file: None,
            }
        };
        let config_path = dir.path().join("payroute.yaml");
        let receiver = Receiver::start().await;
        // The API port is chosen first, so providers' notify_url can name it.
        let api_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_port = api_listener.local_addr().unwrap().port();
        let site = Site {
            public_base_url: public_base_url
                .unwrap_or_else(|| format!("http://127.0.0.1:{api_port}")),
            webhook_url: receiver.url.clone(),
        };
        let yaml = config_yaml(&upstream, &store, &site, rules, &extra(&upstream));
        std::fs::write(&config_path, yaml).unwrap();
        let config = Config::load(&config_path).unwrap_or_else(|e| panic!("test config: {e}"));
        let sandbox = Sandbox::new(payroute::config::sandbox_merchants(
            &config.channels,
            &config.merchants,
        ));
        let sandbox_tls = tls.then(|| {
            payroute::server::TlsSettings::new(
                payroute::sandbox::TLS_CERT_PEM,
                payroute::sandbox::TLS_KEY_PEM,
            )
            .unwrap()
        });
        tokio::spawn(
            sandbox
                .clone()
                .serve(listener, sandbox_tls, std::future::pending()),
        );
        let running = start_proxy_on(config, api_listener).await;
        Harness {
            api: format!("http://{}", running.api_addr),
            admin: format!("http://{}", running.admin_addr),
            sandbox_url: format!("http://127.0.0.1:{port}"),
            running: Some(running),
            sandbox,
            upstream,
            receiver,
            site,
            config_path,
            dir,
            client: Client::builder(TokioExecutor::new()).build_http(),
            store,
            pg: None,
        }
    }

    /// Another proxy instance on the same config (and so the same store and sandbox), as a
    /// second instance behind a load balancer; its API base url and the running instance.
    pub async fn another_instance(&self) -> (String, Running) {
        let config = Config::load(&self.config_path).unwrap_or_else(|e| panic!("test config: {e}"));
        let running = start_proxy(config).await;
        (format!("http://{}", running.api_addr), running)
    }

    /// [`Harness::another_instance`] serving its API on `api`.
    pub async fn another_instance_on(&self, api: TcpListener) -> (String, Running) {
        let config = Config::load(&self.config_path).unwrap_or_else(|e| panic!("test config: {e}"));
        let running = start_proxy_on(config, api).await;
        (format!("http://{}", running.api_addr), running)
    }

    /// Stops the proxy (draining) and starts it again from the config file as it is now, on
    /// new ports, with the same database and sandbox.
    pub async fn restart(&mut self) {
        if let Some(r) = self.running.take() {
            within("the proxy to stop", r.shutdown()).await;
        }
        let config = Config::load(&self.config_path).unwrap_or_else(|e| panic!("test config: {e}"));
        // The same API port: it is the providers' notify_url.
        let api = self
            .site
            .public_base_url
            .trim_start_matches("http://")
            .to_string();
        let listener = within("the API port to be free again", async {
            loop {
                match TcpListener::bind(&api).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await;
        let running = start_proxy_on(config, listener).await;
        self.api = format!("http://{}", running.api_addr);
        self.admin = format!("http://{}", running.admin_addr);
        self.running = Some(running);
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("payroute.db")
    }

    /// Rewrites the config file with other rules (the file watcher may pick it up too).
    pub fn write_config(&self, rules: &str, extra_channels: &str) {
        let yaml = config_yaml(
            &self.upstream,
            &self.store,
            &self.site,
            rules,
            extra_channels,
        );
        write_atomically(&self.config_path, &yaml);
    }

    /// Rewrites the config, reloads it through the admin API, and lets the sandbox trust any
    /// new channel keys.
    pub async fn reload_with(&self, rules: &str, extra_channels: &str) {
        self.write_config(rules, extra_channels);
        let r = self
            .admin_post("/admin/reload", &serde_json::json!({}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let config = Config::load(&self.config_path).unwrap();
        self.sandbox
            .set_merchants(payroute::config::sandbox_merchants(
                &config.channels,
                &config.merchants,
            ));
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        self.try_send(method, url, headers, body)
            .await
            .unwrap_or_else(|e| panic!("request to {url} reaches the server: {e}"))
    }

    /// [`Harness::send`], with a connection that fails or closes before the answer as `Err`.
    pub async fn try_send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Reply, String> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        let (parts, bytes) = within(&format!("an answer from {url}"), async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let (parts, body) = resp.into_parts();
            let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok::<_, String>((parts, bytes))
        })
        .await?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        })
    }

    pub async fn create(&self, body: &Value) -> Reply {
        self.try_create(body)
            .await
            .unwrap_or_else(|e| panic!("a create reaches the server: {e}"))
    }

    /// A create whose connection may fail (the proxy is stopping or was killed).
    pub async fn try_create(&self, body: &Value) -> Result<Reply, String> {
        let auth = format!("Bearer {SHOP_KEY}");
        self.try_send(
            Method::POST,
            &format!("{}/v1/payments", self.api),
            &[("authorization", &auth)],
            &body.to_string(),
        )
        .await
    }

    pub async fn get_payment(&self, merchant: &str, no: &str, refresh: bool) -> Reply {
        let auth = format!("Bearer {SHOP_KEY}");
        let q = if refresh { "?refresh=true" } else { "" };
        self.send(
            Method::GET,
            &format!("{}/v1/payments/{merchant}/{no}{q}", self.api),
            &[("authorization", &auth)],
            "",
        )
        .await
    }

    /// `POST /v1/payments/{merchant}/{no}/close`.
    pub async fn close(&self, merchant: &str, no: &str) -> Reply {
        self.shop_send(
            Method::POST,
            &format!("/v1/payments/{merchant}/{no}/close"),
            "",
        )
        .await
    }

    /// `POST /v1/refunds`.
    pub async fn refund(&self, body: &Value) -> Reply {
        self.shop_send(Method::POST, "/v1/refunds", &body.to_string())
            .await
    }

    /// `GET /v1/refunds/{merchant}/{no}`, with `?refresh=true` when asked.
    pub async fn get_refund(&self, merchant: &str, no: &str, refresh: bool) -> Reply {
        let q = if refresh { "?refresh=true" } else { "" };
        self.shop_send(Method::GET, &format!("/v1/refunds/{merchant}/{no}{q}"), "")
            .await
    }

    /// Creates, pays (in the sandbox) and confirms a payment; its payment object.
    pub async fn paid(&self, merchant: &str, no: &str, method: &str, amount: u64) -> Value {
        let r = self
            .create(&payment(
                merchant,
                no,
                method,
                amount,
                serde_json::json!({}),
            ))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        assert_eq!(self.pay(no).await.status, 200);
        let q = self.get_payment(merchant, no, true).await;
        assert_eq!(q.body["status"], "succeeded", "{}", q.text);
        q.body
    }

    /// A shop API call with the test shop's key.
    pub async fn shop_send(&self, method: Method, path: &str, body: &str) -> Reply {
        let auth = format!("Bearer {SHOP_KEY}");
        self.send(
            method,
            &format!("{}{path}", self.api),
            &[("authorization", &auth)],
            body,
        )
        .await
    }

    pub async fn admin_post(&self, path: &str, body: &Value) -> Reply {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        self.send(
            Method::POST,
            &format!("{}{path}", self.admin),
            &[("authorization", &auth)],
            &body.to_string(),
        )
        .await
    }

    pub async fn admin_get(&self, path: &str) -> Reply {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        self.send(
            Method::GET,
            &format!("{}{path}", self.admin),
            &[("authorization", &auth)],
            "",
        )
        .await
    }

    pub async fn faults(&self, faults: Value) {
        let r = self
            .send(
                Method::POST,
                &format!("{}/sandbox/faults", self.sandbox_url_plain()),
                &[],
                &faults.to_string(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }

    pub async fn pay(&self, no: &str) -> Reply {
        self.send(
            Method::POST,
            &format!("{}/sandbox/pay/{no}", self.sandbox_url_plain()),
            &[],
            "",
        )
        .await
    }

    pub async fn sandbox_orders(&self, no: &str) -> Vec<Value> {
        let r = self
            .send(
                Method::GET,
                &format!("{}/sandbox/orders/{no}", self.sandbox_url_plain()),
                &[],
                "",
            )
            .await;
        r.body["orders"].as_array().cloned().unwrap_or_default()
    }

    /// `GET /sandbox/notifications`: every notification the sandbox made, oldest first.
    pub async fn sandbox_notifications(&self) -> Vec<Value> {
        let r = self
            .send(
                Method::GET,
                &format!("{}/sandbox/notifications", self.sandbox_url_plain()),
                &[],
                "",
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body.as_array().cloned().expect("a JSON list")
    }

    /// The test client speaks plain HTTP; a TLS sandbox is driven through its handler instead.
    fn sandbox_url_plain(&self) -> &str {
        assert!(
            self.upstream.ca_file.is_none(),
            "sandbox knobs need a plain-HTTP sandbox"
        );
        &self.sandbox_url
    }

    pub async fn metrics(&self) -> String {
        self.send(Method::GET, &format!("{}/metrics", self.admin), &[], "")
            .await
            .text
    }

    /// `GET /readyz`'s status.
    pub async fn ready(&self) -> u16 {
        let url = format!("{}/readyz", self.admin);
        self.send(Method::GET, &url, &[], "").await.status
    }

    /// [`Harness::shutdown`] of a harness the test shared with its tasks (all done by now).
    pub async fn shutdown_shared(h: Arc<Harness>) {
        match Arc::try_unwrap(h) {
            Ok(h) => h.shutdown().await,
            Err(_) => panic!("the harness is still shared"),
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            within("the proxy to stop", r.shutdown()).await;
        }
    }
}

/// The proxy for `config` on fresh 127.0.0.1:0 listeners (the config's `listen` addresses are
/// not used), watching its file for reloads.
pub async fn start_proxy(config: Config) -> Running {
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_proxy_on(config, api).await
}

/// [`start_proxy`] with the API on `api`.
pub async fn start_proxy_on(config: Config, api: TcpListener) -> Running {
    let listeners = Listeners {
        api,
        admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        sandbox: None,
    };
    payroute::app::start(config, listeners, true)
        .await
        .unwrap_or_else(|e| panic!("starting the proxy: {e}"))
}

/// A create body with sensible defaults; `extra` overrides or adds fields.
pub fn payment(merchant: &str, no: &str, method: &str, amount: u64, extra: Value) -> Value {
    let mut v = serde_json::json!({
        "merchant_id": merchant, "out_trade_no": no, "amount": amount, "currency": "CNY",
        "method": method, "description": "Test mug",
    });
    if method == "wechat_jsapi" {
        v["payer"] = serde_json::json!({ "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" });
    }
    if method == "wechat_h5" {
        v["payer"] = serde_json::json!({ "client_ip": "203.0.113.7" });
    }
    if let Value::Object(m) = extra {
        for (k, val) in m {
            v[k] = val;
        }
    }
    v
}

/// Replace by rename, as editors and config management do.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A metric sample's value from Prometheus text, e.g. `payroute_config_reloads_total{result="error"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The PostgreSQL database of the tests: `PAYROUTE_TEST_PG_URL`, by default
/// `postgres://postgres@127.0.0.1:5432/test`.
pub fn pg_url() -> String {
    std::env::var("PAYROUTE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema name in the test database, dropped when this is dropped (also when the
/// test panics).
pub struct PgSchema {
    pub name: String,
    pub url: String,
}

impl PgSchema {
    /// `None` when PostgreSQL is not reachable (said loudly on stderr); a panic instead
    /// when `PAYROUTE_REQUIRE_PG=1`.
    pub async fn create(prefix: &str) -> Option<PgSchema> {
        use std::io::Write;
        let url = pg_url();
        let reached = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_postgres::connect(&url, tokio_postgres::NoTls),
        )
        .await;
        let error = match reached {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            }),
            Err(_) => Some("no answer within 5s".to_string()),
        };
        if let Some(error) = error {
            if std::env::var("PAYROUTE_REQUIRE_PG").as_deref() == Ok("1") {
                panic!("PostgreSQL not reachable ({error}) and PAYROUTE_REQUIRE_PG=1");
            }
            // Past the harness's capture of `eprintln!`: this must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: PostgreSQL not reachable ({error}); run with PAYROUTE_REQUIRE_PG=1 \
                 (and PAYROUTE_TEST_PG_URL=postgres://…) to run the PostgreSQL end-to-end tests ***\n"
            );
            return None;
        }
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "{prefix}{}_{nanos}_{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        Some(PgSchema { name, url })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        execute_detached(
            &self.url,
            &format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name),
        );
    }
}

/// Runs `sql` on the PostgreSQL at `url` and waits for it, from a `Drop` (clean-up of a schema
/// or a role): Drop may run inside a runtime or while unwinding, so the statement gets a thread
/// and a runtime of its own. Errors are ignored — clean-up is best effort.
pub fn execute_detached(url: &str, sql: &str) {
    let (url, sql) = (url.to_string(), sql.to_string());
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            if let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                let _ = client.batch_execute(&sql).await;
            }
        });
    })
    .join();
}

/// The real `payroute` binary in place of the harness's in-process proxy: the same config and
/// database, the same API port (the providers' notify_url), its own admin port.
pub struct Binary {
    child: std::process::Child,
    config: PathBuf,
    admin: String,
    /// Its stderr (the log), across restarts.
    log: PathBuf,
}

impl Binary {
    /// Stops `h`'s in-process proxy and starts the binary; `h.admin` then points at it.
    pub async fn take_over(h: &mut Harness) -> Binary {
        let api_port = h
            .site
            .public_base_url
            .rsplit(':')
            .next()
            .unwrap()
            .to_string();
        let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let yaml = std::fs::read_to_string(&h.config_path)
            .unwrap()
            .replacen(
                "listen: 127.0.0.1:0",
                &format!("listen: 127.0.0.1:{api_port}"),
                1,
            )
            .replacen(
                "admin_listen: 127.0.0.1:0",
                &format!("admin_listen: 127.0.0.1:{admin_port}"),
                1,
            );
        let config = h.dir.path().join("binary.yaml");
        std::fs::write(&config, yaml).unwrap();
        if let Some(r) = h.running.take() {
            within("the in-process proxy to stop", r.shutdown()).await;
        }
        h.admin = format!("http://127.0.0.1:{admin_port}");
        let admin = format!("127.0.0.1:{admin_port}");
        let log = h.dir.path().join("binary.log");
        let child = Binary::spawn(&config, &admin, &log).await;
        Binary {
            child,
            config,
            admin,
            log,
        }
    }

    async fn spawn(config: &Path, admin: &str, log: &Path) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_payroute"))
            .args(["serve", "--config"])
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_until("the binary serves", || async {
            tokio::net::TcpStream::connect(admin).await.is_ok()
        })
        .await;
        child
    }

    /// Starts the binary again after it stopped.
    pub async fn restart(&mut self) {
        self.child = Binary::spawn(&self.config, &self.admin, &self.log).await;
    }

    /// Everything the binary logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (`TERM`, `KILL`) to the binary.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// Waits for the binary to exit; whether it exited on its own with success.
    pub async fn exited(&mut self) -> bool {
        within("the binary to exit", async {
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    break status.success();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP forwarder to the test PostgreSQL that can be cut (every connection dropped, the port
/// refusing) and restored: what a database restart looks like to the proxy, without
/// restarting the database other tests share.
pub struct PgForwarder {
    pub port: u16,
    target: String,
    tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl PgForwarder {
    pub async fn start() -> Arc<PgForwarder> {
        let config: tokio_postgres::Config = pg_url().parse().expect("PAYROUTE_TEST_PG_URL");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_string(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let f = Arc::new(PgForwarder {
            port: listener.local_addr().unwrap().port(),
            target: format!("{host}:{port}"),
            tasks: std::sync::Mutex::new(Vec::new()),
        });
        f.serve(listener);
        f
    }

    /// `url` with its host and port replaced by this forwarder's.
    pub fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a postgres:// url");
        let at = rest.find('@').map_or(0, |i| i + 1);
        let end = rest[at..].find(['/', '?']).map_or(rest.len(), |i| at + i);
        format!(
            "{scheme}://{}127.0.0.1:{}{}",
            &rest[..at],
            self.port,
            &rest[end..]
        )
    }

    fn serve(self: &Arc<Self>, listener: TcpListener) {
        let me = self.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = me.target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                me.tasks.lock().unwrap().push(conn.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
    }

    /// Drops every connection and stops listening.
    pub fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restore(self: &Arc<Self>) {
        let addr = format!("127.0.0.1:{}", self.port);
        let listener = within("the forwarder's port to be free", async {
            loop {
                match TcpListener::bind(&addr).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await;
        self.serve(listener);
    }
}

/// A PostgreSQL server of the test's own (initdb in a temp dir, on a free port), so that the
/// test may stop and start it without touching the database other tests share. Run as the
/// `postgres` user when the tests run as root (PostgreSQL refuses root).
pub struct PrivatePg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Run the server's commands through `runuser -u postgres`.
    as_postgres: bool,
}

impl PrivatePg {
    /// `None` (said loudly) when this machine has no PostgreSQL server binaries to run; a
    /// panic instead when `PAYROUTE_REQUIRE_PG=1`.
    pub fn start() -> Option<PrivatePg> {
        use std::io::Write;
        let bin = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
                .max()
        });
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let Some(bin) = bin else {
            if std::env::var("PAYROUTE_REQUIRE_PG").as_deref() == Ok("1") {
                panic!("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin and PAYROUTE_REQUIRE_PG=1");
            }
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb) to run a \
                 private server for the restart test ***\n"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = PrivatePg {
            dir,
            bin,
            port,
            as_postgres: root,
        };
        if root {
            let ok = std::process::Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(pg.dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the private PostgreSQL's directory to postgres");
        }
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "--no-instructions",
            ],
        );
        pg.start_server();
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// One of the server's programs, as the user that may run it.
    fn command(&self, tool: &str) -> std::process::Command {
        let tool = self.bin.join(tool);
        if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(tool);
            c
        } else {
            std::process::Command::new(tool)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The url of database `postgres` on this server.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it accepts connections (`pg_ctl -w`, 30s at most).
    pub fn start_server(&self) {
        let data = self.data();
        let log = self.dir.path().join("server.log").display().to_string();
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &opts, "-w", "-t", "30", "start",
            ],
        );
    }

    /// Stops the server as an operator restarting it would (`-m fast`: sessions are ended,
    /// open transactions rolled back, the committed ones kept).
    pub fn stop_server(&self) {
        let data = self.data();
        self.run(
            "pg_ctl",
            &["-D", &data, "-m", "fast", "-w", "-t", "30", "stop"],
        );
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
    }
}
