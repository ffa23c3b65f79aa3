//! Config builders: channel blocks, the standard rules, a whole config file.

use super::*;

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
    /// The port stays bound (never listening) for the rest of the test process, so no other
    /// test's socket can take it and answer.
    pub fn dead() -> Upstream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        // Kept open on purpose: freed, the port could be handed to another listener.
        std::mem::forget(socket);
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
