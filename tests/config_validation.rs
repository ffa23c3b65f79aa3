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
merchants:
  m_1001: {M1001}
  m_2002: { wechat_sub_mchid: "1900000209", alipay_app_auth_token: tok_m2002_TEST_ONLY }
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

const NO_WECHAT_SUB: &str = "{ alipay_app_auth_token: tok_m1001_TEST_ONLY }";
const FULL: &str =
    r#"{ wechat_sub_mchid: "1900000109", alipay_app_auth_token: tok_m1001_TEST_ONLY }"#;

fn config(m1001: &str, rules: &str) -> String {
    BASE.replace("{M1001}", m1001)
        .replace("{RULES}", rules)
        .replace("{PLATFORM_BASE}", "http://127.0.0.1:8090")
        .replace(
            "{PLATFORM_KEY}",
            "file:config/sandbox/platform_apiclient_key.pem",
        )
        .replace(
            "{WECHATPAY_PUB}",
            "file:config/sandbox/wechatpay_pub_key.pem",
        )
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
