//! `payroute check` on small configs: sub-merchant ids only where a partner / ISV channel is
//! really reachable (no crying wolf), and channels refused when they could leak real money
//! through plain HTTP or the public sandbox keys.

use std::process::Command;

/// Runs `payroute check` on a config text (from the repository root, so `file:config/…`
/// resolves): success and stderr.
fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("payroute.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_payroute"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Two merchants, the platform's partner / ISV channels and m_1001's own WeChat account, all
/// against a loopback sandbox. `{M1001}` is m_1001's merchants: entry, `{RULES}` the rules.
const BASE: &str = r#"
server:
  listen: 127.0.0.1:8080
  admin_listen: 127.0.0.1:9901
  public_base_url: http://127.0.0.1:8080
shops:
  - id: demo-shop
    api_key: demo-shop-key-TEST-ONLY
    merchants: [m_1001, m_2002]
    webhook: { url: http://127.0.0.1:8000/payroute/events, secret: demo-webhook-secret-TEST-ONLY }
merchants:
  m_1001: {M1001}
  m_2002: { wechat_sub_mchid: "1900000209", alipay_app_auth_token: tok_m2002_TEST_ONLY, alipay_seller_id: "2088000000002002" }
channels:
  platform_wechat:
    kind: wechatpay_v3
    mode: partner
    base_url: {PLATFORM_BASE}
    sp_mchid: "1900000100"
    sp_appid: wx8888888888888888
    serial_no: 5157F09EFDC096DE15EBE81A47057A72
    private_key: {PLATFORM_KEY}
    wechatpay_public_key: {WECHATPAY_PUB}
    wechatpay_public_key_id: PUB_KEY_ID_SANDBOX_TEST_ONLY
  m1001_wechat:
    kind: wechatpay_v3
    mode: direct
    merchants: [m_1001]
    base_url: http://127.0.0.1:8090
    mchid: "1900000109"
    appid: wx2421b1c4370ec43b
    serial_no: 3775B6A45ACD588826D15E583A95F5DD
    private_key: file:config/sandbox/m1001_apiclient_key.pem
    platform_certificates: [ file:config/sandbox/wechatpay_platform_cert.pem ]
  platform_alipay:
    kind: alipay
    mode: isv
    base_url: http://127.0.0.1:8090/gateway.do
    app_id: "2021000000000001"
    private_key: file:config/sandbox/platform_alipay_app_key.pem
    alipay_public_key: file:config/sandbox/alipay_sandbox_pub_key.pem
routing:
  rules:
{RULES}
  default: { wechat: platform_wechat, alipay: platform_alipay }
"#;

const NO_WECHAT_SUB: &str =
    r#"{ alipay_app_auth_token: tok_m1001_TEST_ONLY, alipay_seller_id: "2088000000001001" }"#;
const FULL: &str = r#"{ wechat_sub_mchid: "1900000109", alipay_app_auth_token: tok_m1001_TEST_ONLY, alipay_seller_id: "2088000000001001" }"#;

fn config(m1001: &str, rules: &str) -> String {
    platform_wechat(
        &config_keeping_platform(m1001, rules),
        "http://127.0.0.1:8090",
        "file:config/sandbox/platform_apiclient_key.pem",
        "file:config/sandbox/wechatpay_pub_key.pem",
    )
}

fn config_keeping_platform(m1001: &str, rules: &str) -> String {
    BASE.replace("{M1001}", m1001).replace("{RULES}", rules)
}

/// Sets platform_wechat's base_url, private_key and wechatpay_public_key.
fn platform_wechat(text: &str, base: &str, key: &str, public: &str) -> String {
    text.replace("{PLATFORM_BASE}", base)
        .replace("{PLATFORM_KEY}", key)
        .replace("{WECHATPAY_PUB}", public)
}

const OWN_WECHAT_ALL_METHODS: &str = r#"    - name: m1001-own-wechat
      when: { merchant: m_1001, method: [wechat_jsapi, wechat_native, wechat_h5, wechat_app] }
      to: m1001_wechat"#;

#[test]
fn base_config_with_every_sub_merchant_id_passes() {
    let (ok, err) = check(&config(FULL, OWN_WECHAT_ALL_METHODS));
    assert!(ok, "{err}");
}

/// (a) The merchant the product is for: every WeChat method goes to its own account by an
/// unconditional rule, so the platform's partner channel never serves it and it needs no
/// sub_mchid. Rejected before reachability was decided from the rules.
#[test]
fn merchant_on_its_own_channel_for_every_method_needs_no_sub_mchid() {
    let (ok, err) = check(&config(NO_WECHAT_SUB, OWN_WECHAT_ALL_METHODS));
    assert!(ok, "{err}");
    // `family: wechat` says the same as listing the four methods.
    let by_family = OWN_WECHAT_ALL_METHODS.replace(
        "method: [wechat_jsapi, wechat_native, wechat_h5, wechat_app]",
        "family: wechat",
    );
    let (ok, err) = check(&config(NO_WECHAT_SUB, &by_family));
    assert!(ok, "{err}");
}

/// A later rule to the partner channel that the merchant's unconditional rule shadows is
/// unreachable for it, even a merchant-less one with conditions.
#[test]
fn rules_after_an_unconditional_rule_are_unreachable_for_its_merchant() {
    let rules = format!(
        "{OWN_WECHAT_ALL_METHODS}
    - name: promotions-on-platform
      when: {{ metadata: {{ campaign: double11 }}, family: wechat }}
      to: platform_wechat"
    );
    let (ok, err) = check(&config(NO_WECHAT_SUB, &rules));
    assert!(ok, "{err}");
}

/// (b) An amount condition makes the rule conditional: larger payments fall through to the
/// family default, the partner channel, so the sub_mchid is required and the error says who.
#[test]
fn conditional_rule_leaves_the_partner_default_reachable() {
    let rules = OWN_WECHAT_ALL_METHODS.replace(
        "when: { merchant: m_1001,",
        "when: { merchant: m_1001, amount: { max: 100 },",
    );
    let (ok, err) = check(&config(NO_WECHAT_SUB, &rules));
    assert!(!ok, "{err}");
    assert!(
        err.contains(r#"routing.default.wechat: channel "platform_wechat" is partner mode but merchant(s) m_1001 have no wechat_sub_mchid"#),
        "{err}"
    );
    for conditional in [
        r#"hours: "08:00-20:00","#,
        "shop: demo-shop,",
        "currency: CNY,",
        "metadata: { channel: app },",
    ] {
        let rules = OWN_WECHAT_ALL_METHODS.replace(
            "when: { merchant: m_1001,",
            &format!("when: {{ merchant: m_1001, {conditional}"),
        );
        let (ok, err) = check(&config(NO_WECHAT_SUB, &rules));
        assert!(!ok, "{conditional}: {err}");
        assert!(err.contains(r#"channel "platform_wechat""#), "{err}");
    }
}

/// Methods the merchant's rule does not cover still reach the partner default.
#[test]
fn methods_the_rule_does_not_cover_reach_the_default() {
    let rules = OWN_WECHAT_ALL_METHODS.replace(", wechat_h5, wechat_app", "");
    let (ok, err) = check(&config(NO_WECHAT_SUB, &rules));
    assert!(!ok, "{err}");
    assert!(
        err.contains(r#"routing.default.wechat: channel "platform_wechat" is partner mode but merchant(s) m_1001 have no wechat_sub_mchid"#),
        "{err}"
    );
}

/// (c) A fallback is reachable whenever its rule is: a partner fallback needs the sub_mchid.
#[test]
fn partner_fallback_needs_the_sub_mchid() {
    let rules = format!("{OWN_WECHAT_ALL_METHODS}\n      fallback: [platform_wechat]");
    let (ok, err) = check(&config(NO_WECHAT_SUB, &rules));
    assert!(!ok, "{err}");
    assert!(
        err.contains(r#"rules[0] "m1001-own-wechat": channel "platform_wechat" is partner mode but merchant(s) m_1001 have no wechat_sub_mchid"#),
        "{err}"
    );
    assert!(!err.contains("routing.default.wechat"), "{err}");
}

/// Every channel of a split is reachable.
#[test]
fn every_split_channel_is_reachable() {
    let rules = r#"    - name: m1001-canary
      when: { merchant: m_1001, family: wechat }
      split: [ { to: m1001_wechat, weight: 100 }, { to: platform_wechat, weight: 0 } ]"#;
    let (ok, err) = check(&config(NO_WECHAT_SUB, rules));
    assert!(!ok, "{err}");
    assert!(
        err.contains(r#"rules[0] "m1001-canary": channel "platform_wechat" is partner mode but merchant(s) m_1001 have no wechat_sub_mchid"#),
        "{err}"
    );
}

/// The Alipay side too: m_1001 has no app_auth_token and no own Alipay channel, so the ISV
/// default reaches it.
#[test]
fn isv_default_needs_the_app_auth_token() {
    let (ok, err) = check(&config(
        r#"{ wechat_sub_mchid: "1900000109" }"#,
        OWN_WECHAT_ALL_METHODS,
    ));
    assert!(!ok, "{err}");
    assert!(
        err.contains(r#"routing.default.alipay: channel "platform_alipay" is isv mode but merchant(s) m_1001 have no alipay_app_auth_token"#),
        "{err}"
    );
}

/// A throwaway RSA key pair, as bare base64 (PKCS#8 private, SPKI public) — what a real
/// provider account's keys look like to validation: not the sandbox's.
fn fresh_key_pair() -> (String, String) {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use aws_lc_rs::signature::KeyPair as _;
    use base64::Engine;
    let kp = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let private = b64.encode(kp.as_der().unwrap().as_ref());
    let public = b64.encode(kp.public_key().as_der().unwrap().as_ref());
    (private, public)
}

const SANDBOX_PLATFORM_KEY: &str = "file:config/sandbox/platform_apiclient_key.pem";
const SANDBOX_WECHATPAY_PUB: &str = "file:config/sandbox/wechatpay_pub_key.pem";

/// The sandbox keys are fine against a loopback sandbox, however it is spelled.
#[test]
fn sandbox_keys_are_accepted_on_loopback() {
    let text = config_keeping_platform(FULL, OWN_WECHAT_ALL_METHODS);
    for base in [
        "http://127.0.0.1:8090",
        "http://127.3.2.1:8090",
        "http://localhost:8090",
        "http://[::1]:8090",
        "https://localhost:8443",
    ] {
        let (ok, err) = check(&platform_wechat(
            &text,
            base,
            SANDBOX_PLATFORM_KEY,
            SANDBOX_WECHATPAY_PUB,
        ));
        assert!(ok, "{base}: {err}");
    }
}

/// (A4) The public sandbox keys on a channel to a real provider are refused, each key named
/// with the reason; fresh keys on the same channel pass. Accepted before this check existed.
#[test]
fn sandbox_keys_are_refused_off_loopback() {
    let text = config_keeping_platform(FULL, OWN_WECHAT_ALL_METHODS);
    let real = "https://api.mch.weixin.qq.com";
    let (ok, err) = check(&platform_wechat(
        &text,
        real,
        SANDBOX_PLATFORM_KEY,
        SANDBOX_WECHATPAY_PUB,
    ));
    assert!(!ok, "{err}");
    assert!(
        err.contains("channels.platform_wechat.private_key: this is the public sandbox TEST-ONLY key (config/sandbox/platform_apiclient_key.pem); it is refused for a non-loopback base_url (api.mch.weixin.qq.com)"),
        "{err}"
    );
    assert!(
        err.contains("channels.platform_wechat.wechatpay_public_key: this is the public sandbox TEST-ONLY key"),
        "{err}"
    );
    assert!(err.contains("2 error(s)"), "{err}");

    // The key of another sandbox merchant, inline as PEM, is just as public.
    let m2002 = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/sandbox/m2002_apiclient_key.pem"
    ))
    .unwrap();
    let (private, public) = fresh_key_pair();
    let inline = format!(
        "|\n{}",
        m2002
            .lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    );
    let (ok, err) = check(&platform_wechat(&text, real, &inline, &public));
    assert!(!ok, "{err}");
    assert!(
        err.contains("channels.platform_wechat.private_key: this is the public sandbox TEST-ONLY key (config/sandbox/m2002_apiclient_key.pem)"),
        "{err}"
    );
    assert!(err.contains("1 error(s)"), "{err}");

    let (ok, err) = check(&platform_wechat(&text, real, &private, &public));
    assert!(ok, "{err}");
}

/// Alipay keys and WeChat Pay platform certificates are recognised too.
#[test]
fn sandbox_alipay_keys_and_certificates_are_refused_off_loopback() {
    let text = config(FULL, OWN_WECHAT_ALL_METHODS)
        .replace(
            "base_url: http://127.0.0.1:8090/gateway.do",
            "base_url: https://openapi.alipay.com/gateway.do",
        )
        .replace(
            "    base_url: http://127.0.0.1:8090\n    mchid:",
            "    base_url: https://api.mch.weixin.qq.com\n    mchid:",
        );
    let (ok, err) = check(&text);
    assert!(!ok, "{err}");
    for expected in [
        "channels.platform_alipay.private_key: this is the public sandbox TEST-ONLY key (config/sandbox/platform_alipay_app_key.pem)",
        "channels.platform_alipay.alipay_public_key: this is the public sandbox TEST-ONLY key (config/sandbox/alipay_sandbox_key.pem)",
        "channels.m1001_wechat.private_key: this is the public sandbox TEST-ONLY key (config/sandbox/m1001_apiclient_key.pem)",
        "channels.m1001_wechat.platform_certificates[0]: this is the public sandbox TEST-ONLY key (config/sandbox/wechatpay_platform_key.pem)",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

/// (A4) Plain HTTP to anything but loopback is refused, naming the channel and its base_url.
#[test]
fn plain_http_is_refused_off_loopback() {
    let text = config_keeping_platform(FULL, OWN_WECHAT_ALL_METHODS);
    let (private, public) = fresh_key_pair();
    for base in [
        "http://10.0.0.5:8090",
        "http://api.mch.weixin.qq.com",
        "http://127.0.0.1.nip.io",
    ] {
        let (ok, err) = check(&platform_wechat(&text, base, &private, &public));
        assert!(!ok, "{base}: {err}");
        assert!(
            err.contains(&format!("channels.platform_wechat.base_url: {base:?} is plain http:// to a non-loopback host; it is refused")),
            "{err}"
        );
    }
}

#[test]
fn a_shop_whose_merchants_can_be_paid_needs_a_webhook() {
    let text = config(FULL, OWN_WECHAT_ALL_METHODS).replace(
        "    webhook: { url: http://127.0.0.1:8000/payroute/events, secret: demo-webhook-secret-TEST-ONLY }\n",
        "",
    );
    let (ok, err) = check(&text);
    assert!(!ok, "a shop without a webhook is refused");
    assert!(
        err.contains("shops[0] \"demo-shop\": webhook is required"),
        "{err}"
    );
}

#[test]
fn a_global_limit_needs_redis_and_a_redis_url_is_checked() {
    let base = config(FULL, OWN_WECHAT_ALL_METHODS);
    let global = "limits:\n  - { name: per-merchant, key: merchant, rate: 50/s, scope: global }\n";
    let (ok, err) = check(&format!("{base}{global}"));
    assert!(!ok);
    assert!(
        err.contains(r#"limits[0] "per-merchant": scope global needs redis:"#),
        "{err}"
    );
    let (ok, err) = check(&format!(
        "{base}{global}redis: {{ url: \"http://:hunter2@127.0.0.1:6379\" }}\n"
    ));
    assert!(!ok);
    assert!(err.contains("redis.url: must start with redis://"), "{err}");
    assert!(!err.contains("hunter2"), "the URL's password leaked: {err}");
    let (ok, err) = check(&format!(
        "{base}{global}redis: {{ url: \"redis://127.0.0.1:6379\", key_prefix: \"pr:\" }}\n"
    ));
    assert!(ok, "{err}");
    let (ok, err) = check(&format!(
        "{base}limits:\n  - {{ name: l, key: merchant, rate: 5/s, scope: cluster }}\n"
    ));
    assert!(!ok);
    assert!(
        err.contains(r#"scope "cluster" is not local or global"#),
        "{err}"
    );
}

// Issue 15 item 3: a merchant's own (direct-mode) account serves only that merchant, and
// each provider id names one merchant. Each config below printed `ok` before.

/// `config(FULL, rules)` with `default:` replaced.
fn with_default(rules: &str, default: &str) -> String {
    config(FULL, rules).replace(
        "  default: { wechat: platform_wechat, alipay: platform_alipay }",
        &format!("  default: {default}"),
    )
}

/// A second shop that lists m_1001 only.
const M1001_SHOP: &str = "  - id: m1001-shop
    api_key: m1001-shop-key-TEST-ONLY
    merchants: [m_1001]
    webhook: { url: http://127.0.0.1:8000/payroute/events, secret: demo-webhook-secret-TEST-ONLY }
merchants:";

#[track_caller]
fn refused(text: &str, expected: &[&str]) -> String {
    let (ok, err) = check(text);
    assert!(!ok, "accepted, expected {expected:?}");
    for e in expected {
        assert!(err.contains(e), "missing {e:?} in:\n{err}");
    }
    err
}

#[test]
fn a_direct_channel_names_its_owners_and_a_partner_channel_none() {
    let text = config(FULL, OWN_WECHAT_ALL_METHODS);
    refused(
        &text.replace("    merchants: [m_1001]\n", ""),
        &["channels.m1001_wechat: merchants is required for mode direct"],
    );
    refused(
        &text.replace("    merchants: [m_1001]\n", "    merchants: []\n"),
        &["channels.m1001_wechat: merchants is empty"],
    );
    refused(
        &text.replace(
            "    mode: isv\n",
            "    mode: isv\n    merchants: [m_1001, m_2002]\n",
        ),
        &["channels.platform_alipay: merchants is for mode direct (a merchant's own account); mode isv serves every merchant"],
    );
}

/// Review of issue 15: a merchant's own account serves one merchant. The provider keys the
/// account's orders by out_trade_no alone, so two owners' `X` would be one order there (paid
/// once, then settled, closed or refunded for either).
#[test]
fn a_direct_channel_serves_one_merchant() {
    let text = config(FULL, OWN_WECHAT_ALL_METHODS);
    refused(
        &text.replace("    merchants: [m_1001]\n", "    merchants: [m_1001, m_2002]\n"),
        &["channels.m1001_wechat: merchants names 2 merchants (m_1001, m_2002); a merchant's own account serves one merchant"],
    );
}

/// Review of issue 15: an Alipay app collects for itself (direct) or for merchants (ISV), not
/// both: its direct orders name no seller, so one would match another merchant's ISV
/// notification for the same out_trade_no.
#[test]
fn an_alipay_app_is_direct_or_isv_not_both() {
    let text = config(FULL, OWN_WECHAT_ALL_METHODS).replace(
        "routing:\n",
        "  platform_self_alipay:
    kind: alipay
    mode: direct
    merchants: [m_1001]
    base_url: http://127.0.0.1:8090/gateway.do
    app_id: \"2021000000000001\"
    private_key: file:config/sandbox/platform_alipay_app_key.pem
    alipay_public_key: file:config/sandbox/alipay_sandbox_pub_key.pem
routing:\n",
    );
    refused(
        &text,
        &[
            r#"channels.platform_self_alipay.app_id: "2021000000000001" is also the app of ISV channel "platform_alipay""#,
        ],
    );
}

/// A rule naming another merchant, in `to`, a split or a fallback, even after the owner's
/// own rule.
#[test]
fn a_rule_that_sends_another_merchant_to_an_own_account_is_refused() {
    let to = format!(
        "{OWN_WECHAT_ALL_METHODS}
    - name: m2002-on-m1001
      when: {{ merchant: [m_2002], family: wechat }}
      to: m1001_wechat"
    );
    let err = refused(
        &config(FULL, &to),
        &[
            r#"rules[1] "m2002-on-m1001": to: channel "m1001_wechat" is the own account of merchant(s) m_1001 (mode direct) but it sends payments of merchant(s) m_2002 there"#,
        ],
    );
    assert!(err.contains("1 error(s)"), "{err}");

    let split = r#"    - name: both-canary
      when: { merchant: [m_1001, m_2002], family: wechat }
      split: [ { to: platform_wechat, weight: 90 }, { to: m1001_wechat, weight: 10 } ]"#;
    let text = config(FULL, split);
    let err = refused(
        &text,
        &[
            r#"rules[0] "both-canary": split[1].to: channel "m1001_wechat" is the own account of merchant(s) m_1001 (mode direct) but it sends payments of merchant(s) m_2002 there"#,
        ],
    );
    // Located at the offending split entry, not just the rule.
    let (line, text_line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("split: ["))
        .unwrap();
    let column = text_line.find("to: m1001_wechat").unwrap();
    assert!(
        err.contains(&format!(":{}:{}: rules[0]", line + 1, column + 1)),
        "{err}"
    );

    let fallback = r#"    - name: m2002-platform
      when: { merchant: m_2002, family: wechat }
      to: platform_wechat
      fallback: [m1001_wechat]"#;
    refused(
        &config(FULL, fallback),
        &[
            r#"rules[0] "m2002-platform": fallback[0]: channel "m1001_wechat" is the own account of merchant(s) m_1001 (mode direct) but it sends payments of merchant(s) m_2002 there"#,
        ],
    );
}

/// A rule without `when.merchant` counts as any merchant, whatever else it asks (the
/// issue's reproduction: a metadata rule sent every merchant's tagged orders to m_1001's
/// account).
#[test]
fn a_rule_without_a_merchant_condition_counts_as_any_merchant() {
    for when in [
        "{ metadata: { campaign: double11 }, family: wechat }",
        "{ amount: { max: 100 }, family: wechat }",
        "{ method: wechat_native }",
        "{ family: wechat, currency: CNY }",
        r#"{ family: wechat, hours: "08:00-20:00" }"#,
    ] {
        let rules = format!("    - name: promo\n      when: {when}\n      to: m1001_wechat");
        refused(
            &config(FULL, &rules),
            &[
                r#"rules[0] "promo": to: channel "m1001_wechat" is the own account of merchant(s) m_1001 (mode direct) but it has no when.merchant (nor when.shop), so any merchant's payment can reach it; add when.merchant: [m_1001]"#,
            ],
        );
    }
}

/// A `shop` condition reaches that shop's merchants: refused for a shop that lists another
/// merchant, accepted for a shop of the owner alone.
#[test]
fn a_shop_condition_reaches_that_shops_merchants() {
    let rule = |shop: &str| {
        format!("    - name: by-shop\n      when: {{ shop: {shop}, family: wechat }}\n      to: m1001_wechat")
    };
    let two_shops =
        |rules: &str| config(FULL, rules).replace("\nmerchants:\n", &format!("\n{M1001_SHOP}\n"));
    let text = two_shops(&rule("demo-shop"));
    assert!(text.contains("id: m1001-shop"), "{text}");
    refused(
        &text,
        &[
            r#"rules[0] "by-shop": to: channel "m1001_wechat" is the own account of merchant(s) m_1001 (mode direct) but it has no when.merchant, and shop(s) demo-shop send payments of merchant(s) m_2002 there"#,
        ],
    );
    let (ok, err) = check(&two_shops(&rule("m1001-shop")));
    assert!(ok, "{err}");
}

/// A family default reaches every merchant a shop lists that no rule takes first.
#[test]
fn a_default_that_reaches_another_merchant_is_refused() {
    let own_default = "{ wechat: m1001_wechat, alipay: platform_alipay }";
    refused(
        &with_default(OWN_WECHAT_ALL_METHODS, own_default),
        &[
            r#"routing.default.wechat: channel "m1001_wechat" is the own account of merchant(s) m_1001 (mode direct) but the wechat default sends payments of merchant(s) m_2002 to it"#,
        ],
    );
    // Once m_2002's WeChat payments all go elsewhere, only m_1001 reaches the default.
    let m2002_elsewhere = format!(
        "{OWN_WECHAT_ALL_METHODS}
    - name: m2002-platform
      when: {{ merchant: m_2002, family: wechat }}
      to: platform_wechat"
    );
    let (ok, err) = check(&with_default(&m2002_elsewhere, own_default));
    assert!(ok, "{err}");
    // A conditional rule leaves the default reachable again.
    let conditional = m2002_elsewhere.replace(
        "merchant: m_2002,",
        "merchant: m_2002, amount: { max: 100 },",
    );
    refused(
        &with_default(&conditional, own_default),
        &[
            r#"routing.default.wechat: channel "m1001_wechat""#,
            "merchant(s) m_2002 to it",
        ],
    );
}

/// One id given to two merchants: refused naming both merchants and the id — but a token
/// by neither value nor fragment.
#[test]
fn a_provider_id_given_to_two_merchants_is_refused() {
    let base = config(FULL, OWN_WECHAT_ALL_METHODS);
    let m2002 = r#"  m_2002: { wechat_sub_mchid: "1900000209", alipay_app_auth_token: tok_m2002_TEST_ONLY, alipay_seller_id: "2088000000002002" }"#;
    assert!(base.contains(m2002));
    refused(
        &base.replace(m2002, &m2002.replace("1900000209", "1900000109")),
        &[
            r#"merchants.m_2002.wechat_sub_mchid: "1900000109" is also merchant m_1001's wechat_sub_mchid; one WeChat Pay sub-merchant belongs to one merchant (m_1001 and m_2002)"#,
        ],
    );
    let err = refused(
        &base.replace(m2002, &m2002.replace("tok_m2002_TEST_ONLY", "tok_m1001_TEST_ONLY")),
        &["merchants.m_2002.alipay_app_auth_token: the same token as merchant m_1001's alipay_app_auth_token; a token authorizes one merchant's Alipay account (m_1001 and m_2002)"],
    );
    assert!(!err.contains("tok_m1001"), "the token leaked: {err}");
    refused(
        &base.replace(
            m2002,
            &m2002.replace("2088000000002002", "2088000000001001"),
        ),
        &[
            r#"merchants.m_2002.alipay_seller_id: "2088000000001001" is also merchant m_1001's alipay_seller_id; one Alipay account belongs to one merchant (m_1001 and m_2002)"#,
        ],
    );
}

/// Issue 15 item 2: every merchant an ISV channel can reach needs its Alipay user id, and it
/// must look like one.
#[test]
fn an_isv_merchant_needs_a_well_formed_alipay_seller_id() {
    let base = config(FULL, OWN_WECHAT_ALL_METHODS);
    let seller = r#", alipay_seller_id: "2088000000002002""#;
    assert!(base.contains(seller));
    refused(
        &base.replace(seller, ""),
        &[
            r#"routing.default.alipay: channel "platform_alipay" is isv mode but merchant(s) m_2002 have no alipay_seller_id under merchants:"#,
        ],
    );
    for bad in [
        "208800000000200",
        "20880000000020021",
        "1088000000002002",
        "2088-00000002002",
    ] {
        refused(
            &base.replace("2088000000002002", bad),
            &[&format!(
                r#"merchants.m_2002.alipay_seller_id: "{bad}" is not an Alipay user id (2088 and 12 more digits, 16 in all)"#
            )],
        );
    }
}

/// A `wechat_sub_mchid` that is a direct channel's `mchid` names that merchant account:
/// given to a merchant the channel does not list, the platform's partner channel would pay
/// that merchant's orders into another merchant's own account.
#[test]
fn a_sub_mchid_that_is_another_merchants_own_mchid_is_refused() {
    let base = config(FULL, OWN_WECHAT_ALL_METHODS);
    // m_1001 moves to a sub-merchant id of its own; m_2002 is given m_1001's own mchid.
    let text = base
        .replace(
            r#"wechat_sub_mchid: "1900000109""#,
            r#"wechat_sub_mchid: "1900000110""#,
        )
        .replace(
            r#"wechat_sub_mchid: "1900000209""#,
            r#"wechat_sub_mchid: "1900000109""#,
        );
    refused(
        &text,
        &[
            r#"merchants.m_2002.wechat_sub_mchid: "1900000109" is the mchid of channel "m1001_wechat", the own account of merchant(s) m_1001; m_2002 is not among its merchants:"#,
        ],
    );
    // The owner itself may be both a sub-merchant of the platform and on its own account.
    let (ok, err) = check(&base);
    assert!(ok, "{err}");
}

// Issue 18: a channel's quota ("bank limits"), in fen.

/// `config(FULL, …)` with `quota: <quota>` on m1001_wechat.
fn with_quota(quota: &str) -> String {
    config(FULL, OWN_WECHAT_ALL_METHODS).replace(
        "    appid: wx2421b1c4370ec43b\n",
        &format!("    appid: wx2421b1c4370ec43b\n    quota: {quota}\n"),
    )
}

#[test]
fn a_quota_of_positive_limits_in_order_passes() {
    for quota in [
        "{ daily: 5000000, monthly: 120000000, single: 500000 }",
        "{ daily: 5000000 }",
        "{ monthly: 120000000 }",
        "{ single: 500000 }",
        // Equal limits are consistent (a day may take the whole month's room).
        "{ daily: 500000, monthly: 500000, single: 500000 }",
    ] {
        let (ok, err) = check(&with_quota(quota));
        assert!(ok, "{quota}: {err}");
    }
}

#[test]
fn a_quota_names_the_channel_and_key_of_each_bad_limit() {
    // A YAML null is a limit not set.
    for empty in ["{}", "{ single: ~ }"] {
        refused(
            &with_quota(empty),
            &["channels.m1001_wechat.quota: is empty; set at least one of daily, monthly, single"],
        );
    }
    for (quota, key) in [
        ("{ daily: 0 }", "daily"),
        ("{ daily: -5 }", "daily"),
        ("{ monthly: 1.5 }", "monthly"),
        ("{ single: \"500\" }", "single"),
    ] {
        refused(
            &with_quota(quota),
            &[&format!(
                "channels.m1001_wechat.quota.{key}: must be a positive integer (fen)"
            )],
        );
    }
    // Every bad limit is reported, not only the first.
    refused(
        &with_quota("{ daily: 0, monthly: 0 }"),
        &[
            "channels.m1001_wechat.quota.daily: must be a positive integer (fen)",
            "channels.m1001_wechat.quota.monthly: must be a positive integer (fen)",
        ],
    );
    refused(
        &with_quota("{ daily: 1000, single: 1001 }"),
        &["channels.m1001_wechat.quota.single: 1001 is more than daily 1000"],
    );
    refused(
        &with_quota("{ daily: 1001, monthly: 1000 }"),
        &["channels.m1001_wechat.quota.daily: 1001 is more than monthly 1000"],
    );
    refused(
        &with_quota("{ monthly: 1000, single: 1001 }"),
        &["channels.m1001_wechat.quota.single: 1001 is more than monthly 1000"],
    );
    // A typo is an error, not a limit silently missing.
    refused(&with_quota("{ dialy: 1000 }"), &["unknown field `dialy`"]);
}
