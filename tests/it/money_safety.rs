//! Money safety through real sockets: one order never reaches two accounts, nothing
//! unverified becomes final, refunds end in the states the providers define, and claims on a
//! record stay honest. Each test here failed on the code before issue 6 (see its comment).

use crate::support;

use std::time::Duration;

use http::Method;
use serde_json::json;
use support::{payment, wait_until, Harness};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// m_1001's QR payments go to its own account, falling back to the platform.
const OWN_WITH_FALLBACK: &str = r#"
  rules:
    - name: m1001-own-wechat
      when: { merchant: [m_1001], method: [wechat_native] }
      to: m1001_wechat
      fallback: [platform_wechat]
  default: { wechat: platform_wechat }
"#;

/// The stored `attempt_until` and `created_at` of a payment, read from the SQLite file.
fn claim(h: &Harness, no: &str) -> (Option<i64>, i64) {
    let conn = rusqlite::Connection::open(h.db_path()).unwrap();
    conn.query_row(
        "SELECT attempt_until, created_at FROM payments WHERE out_trade_no = ?1",
        [no],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

/// Every order the sandbox holds for `no`, by account `mchid`, with its create count.
async fn creates_by_mchid(h: &Harness, no: &str) -> Vec<(String, u64)> {
    h.sandbox_orders(no)
        .await
        .iter()
        .map(|o| {
            (
                o["mchid"].as_str().unwrap_or_default().to_string(),
                o["create_calls"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// Before: `with_retries` kept only the last error, so 500 → 500 → breaker open ended as
/// "nothing sent" and the order was rebound to the platform and created there too.
#[tokio::test]
async fn a_create_that_may_have_reached_its_channel_is_never_failed_over() {
    let h = Harness::start_with(false, OWN_WITH_FALLBACK, "").await;
    assert_eq!(
        h.create(&payment(
            "m_1001",
            "sticky-0",
            "wechat_native",
            100,
            json!({})
        ))
        .await
        .status,
        201
    );
    // Three failed queries bring m1001_wechat's breaker to 3 of its 5.
    h.faults(
        json!({"fail_next": 3, "fail_status": 500, "fail_code": "INTERNAL", "fail_ops": ["query"]}),
    )
    .await;
    h.get_payment("m_1001", "sticky-0", true).await;
    // This create: 500 (4), 500 (5: the breaker opens), then "circuit open".
    h.faults(json!({"fail_next": 2, "fail_status": 500, "fail_code": "INTERNAL", "fail_ops": ["create"]}))
        .await;
    let r = h
        .create(&payment(
            "m_1001",
            "sticky-1",
            "wechat_native",
            100,
            json!({}),
        ))
        .await;
    r.expect_error(504, "channel_timeout");
    assert_eq!(r.body["payment"]["status"], "unknown");
    assert_eq!(r.body["payment"]["channel"], "m1001_wechat");
    assert!(
        creates_by_mchid(&h, "sticky-1").await.is_empty(),
        "no account received a create for the order"
    );
    let again = h
        .create(&payment(
            "m_1001",
            "sticky-1",
            "wechat_native",
            100,
            json!({}),
        ))
        .await;
    // The shop's retry stays on the same account, never the fallback: that account's breaker
    // is open, so the retry is refused as unavailable, on m1001_wechat, and nothing was
    // created anywhere (a failover would answer 201 on platform_wechat).
    again.expect_error(503, "channel_unavailable");
    assert_eq!(
        again.body["payment"]["channel"], "m1001_wechat",
        "{}",
        again.text
    );
    assert_eq!(
        again.body["payment"]["out_trade_no"], "sticky-1",
        "{}",
        again.text
    );
    assert!(
        creates_by_mchid(&h, "sticky-1").await.is_empty(),
        "no account received a create for the order"
    );
    h.shutdown().await;
}

/// Before: a channel limit that refused the third attempt, after two 5xx, counted as
/// "nothing sent" and the order was failed over.
#[tokio::test]
async fn a_channel_limit_after_a_5xx_is_not_nothing_sent() {
    let h = Harness::start_with(false, OWN_WITH_FALLBACK, "").await;
    // Two calls an hour: the two 5xx attempts spend them, the third is refused locally.
    let limited = support::wechat_direct(
        &h.upstream,
        "limited_wechat",
        "1900000109",
        "wx2421b1c4370ec43b",
        "0C0C0C0C",
        "m1001_apiclient_key.pem",
    )
    .with("limit", "{ rate: 2/h, burst: 2 }");
    h.reload_with(
        &OWN_WITH_FALLBACK.replace("to: m1001_wechat", "to: limited_wechat"),
        &limited.to_string(),
    )
    .await;
    h.faults(json!({"fail_next": 2, "fail_status": 500, "fail_code": "INTERNAL", "fail_ops": ["create"]}))
        .await;
    let r = h
        .create(&payment(
            "m_1001",
            "limit-5xx",
            "wechat_native",
            100,
            json!({}),
        ))
        .await;
    r.expect_error(504, "channel_timeout");
    assert_eq!(r.body["payment"]["channel"], "limited_wechat");
    assert_eq!(r.body["payment"]["status"], "unknown");
    assert!(creates_by_mchid(&h, "limit-5xx").await.is_empty());
    h.shutdown().await;
}

/// Before: the refund went to whatever sub_mchid the live config named for the merchant.
#[tokio::test]
async fn a_refund_after_the_sub_mchid_changed_is_refused_not_sent_elsewhere() {
    let h = Harness::start().await;
    h.paid("m_4004", "acct-1", "wechat_native", 900).await;
    // Ops change m_4004's sub-merchant id.
    let yaml = std::fs::read_to_string(&h.config_path)
        .unwrap()
        .replace("\"1900000409\"", "\"1900000499\"");
    support::write_atomically(&h.config_path, &yaml);
    let r = h.admin_post("/admin/reload", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);

    let r = h
        .refund(&json!({"merchant_id": "m_4004", "out_trade_no": "acct-1", "out_refund_no": "acct-1-r", "amount": 900}))
        .await;
    r.expect_error(503, "channel_unavailable");
    let msg = r.error_message();
    assert!(
        msg.contains("sub_mchid 1900000409 → 1900000499"),
        "names the mismatch: {msg}"
    );
    for order in h.sandbox_orders("acct-1").await {
        assert_eq!(order["refunds"], json!([]), "no refund reached any account");
    }
    // The order's own account is still what queries use: refused too, never sent.
    h.get_payment("m_4004", "acct-1", true)
        .await
        .expect_error(503, "channel_unavailable");
    let m = h.metrics().await;
    assert_eq!(
        support::metric(
            &m,
            r#"payroute_account_refusals_total{channel="platform_wechat",operation="refund"}"#
        ),
        Some(1.0)
    );
    h.shutdown().await;
}

/// Before: a failover kept the claim sized for the first channel's deadline.
#[tokio::test]
async fn a_failover_renews_the_claim_for_the_fallback() {
    let dead = support::wechat_direct(
        &support::Upstream::dead(),
        "dead_wechat",
        "1900000109",
        "wx0000000000000001",
        "0A0A0A0A",
        "m1001_apiclient_key.pem",
    )
    .with("timeout", "1s");
    let h = Harness::start_with(
        false,
        &OWN_WITH_FALLBACK.replace("to: m1001_wechat", "to: dead_wechat"),
        &dead.to_string(),
    )
    .await;
    // The fallback (2s deadline) answers after 1.5s: long enough to look at the claim.
    h.faults(json!({"latency_ms": 1500})).await;
    let body = payment("m_1001", "renew-1", "wechat_native", 100, json!({}));
    let create = h.create(&body);
    let look = async {
        wait_until("the order is failed over", || async {
            !creates_by_mchid(&h, "renew-1").await.is_empty()
        })
        .await;
        claim(&h, "renew-1")
    };
    let (r, (until, created)) = tokio::join!(create, look);
    r.expect_created_on("platform_wechat");
    // dead_wechat's claim would be created + 2×1s + 5s; the fallback's is 2×2s + 5s.
    let until = until.expect("a claim while the fallback is called");
    assert!(
        until - created >= 8_500,
        "claim {}ms past creation",
        until - created
    );
    h.shutdown().await;
}

/// Before: a refresh applied the channel's word and cleared the in-flight create's claim,
/// so a twin then sent the order a second time.
#[tokio::test]
async fn a_refresh_never_clears_another_requests_claim() {
    let h = Harness::start().await;
    h.faults(json!({"latency_ms": 1500})).await;
    let body = payment("m_1001", "claim-1", "wechat_native", 100, json!({}));
    let first = h.create(&body);
    let meanwhile = async {
        wait_until("the sandbox has the order", || async {
            !creates_by_mchid(&h, "claim-1").await.is_empty()
        })
        .await;
        // The create in flight keeps its 1.5s; a refresh that reached the channel now is
        // answered at once, while the create's claim is still live.
        h.faults(json!({})).await;
        let refreshed = h.get_payment("m_1001", "claim-1", true).await;
        let twin = h.create(&body).await;
        (refreshed, twin)
    };
    let (first, (refreshed, twin)) = tokio::join!(first, meanwhile);
    assert_eq!(
        creates_by_mchid(&h, "claim-1").await,
        vec![("1900000109".to_string(), 1)],
        "exactly one create reached the channel"
    );
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(refreshed.status, 200, "{}", refreshed.text);
    twin.expect_error(409, "request_in_progress");
    h.shutdown().await;
}

/// Issue 16 item 7b: a create whose own word lost the compare-and-set to a notification ends
/// its claim all the same, so a replay answers the final state at once. Before: the create
/// answered the record as the notification left it — still holding the create's claim,
/// which a notification never clears — and every replay met `409 request_in_progress`
/// until the claim ran out (2 × the 2 s timeout + 5 s).
#[tokio::test]
async fn a_create_that_lost_its_write_to_a_notification_still_ends_its_claim() {
    let h = Harness::start().await;
    // The create reaches the sandbox, which answers after the 2s deadline: the create then
    // asks the channel (learning "paid") and writes that word under its claim.
    h.faults(json!({"latency_ms": 2500})).await;
    let body = payment("m_1001", "lost-cas", "wechat_native", 100, json!({}));
    let first = h.create(&body);
    let meanwhile = async {
        wait_until("the sandbox has the order", || async {
            !creates_by_mchid(&h, "lost-cas").await.is_empty()
        })
        .await;
        // Paid while the create waits: the notification is applied first (the claim is
        // live, so it stays), and the create's own write loses to it.
        h.faults(json!({})).await;
        assert_eq!(h.pay("lost-cas").await.status, 200);
        wait_until("the notification applied", || async {
            h.get_payment("m_1001", "lost-cas", false).await.body["status"] == "succeeded"
        })
        .await;
    };
    let (first, ()) = tokio::join!(first, meanwhile);
    assert_eq!(
        (first.status, first.body["status"].as_str()),
        (201, Some("succeeded")),
        "{}",
        first.text
    );
    let (held, _) = claim(&h, "lost-cas");
    let replay = h.create(&body).await;
    assert_eq!(
        (replay.status, replay.body["status"].as_str()),
        (200, Some("succeeded")),
        "a replay right after the create answers its final state (claim left: {held:?}): {}",
        replay.text
    );
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(held, None, "the create's claim ended");
    h.receiver.event("payment.succeeded", "lost-cas").await;
    h.shutdown().await;
}

/// Before: close did not claim the record, so a create retry ran beside it.
#[tokio::test]
async fn a_close_claims_the_record_before_calling_the_channel() {
    let h = Harness::start().await;
    h.faults(json!({"fail_next": 3, "fail_status": 500, "fail_code": "INTERNAL", "fail_ops": ["create"]}))
        .await;
    let body = payment("m_1001", "close-claim", "wechat_native", 100, json!({}));
    h.create(&body).await.expect_error(504, "channel_timeout");
    h.faults(json!({"latency_ms": 1500})).await;
    let before = claim(&h, "close-claim").0;
    let close = h.close("m_1001", "close-claim");
    // The retry once the close holds the record's claim (a new attempt_until written before
    // its 1.5 s channel call), not after a guessed delay.
    let retry = async {
        wait_until("the close to claim the record", || async {
            let now = claim(&h, "close-claim").0;
            now.is_some() && now != before
        })
        .await;
        h.create(&body).await
    };
    let (closed, retry) = tokio::join!(close, retry);
    assert_eq!(closed.status, 200, "{}", closed.text);
    assert_eq!(closed.body["status"], "closed");
    retry.expect_error(409, "request_in_progress");
    assert!(
        creates_by_mchid(&h, "close-claim").await.is_empty(),
        "no create ran beside the close"
    );
    h.shutdown().await;
}

/// Before: a WeChat error answer was mapped without checking its signature, so an unsigned
/// or forged `PARAM_ERROR` made the payment `failed` and a forged refusal freed a refund.
#[tokio::test]
async fn unverified_error_answers_change_nothing_final() {
    let h = Harness::start().await;
    for (no, knob) in [
        ("unsigned-1", "fail_unsigned"),
        ("forged-1", "tamper_errors"),
    ] {
        h.faults(json!({"fail_next": 1, "fail_status": 400, "fail_code": "PARAM_ERROR", "fail_ops": ["create"], knob: true}))
            .await;
        let r = h
            .create(&payment("m_1001", no, "wechat_native", 100, json!({})))
            .await;
        r.expect_error(502, "channel_error");
        assert_eq!(r.body["payment"]["status"], "unknown", "{no}");
    }

    h.paid("m_1001", "unsigned-r", "wechat_native", 700).await;
    h.faults(json!({"fail_next": 1, "fail_status": 403, "fail_code": "NOT_ENOUGH", "fail_ops": ["refund"], "fail_unsigned": true}))
        .await;
    h.refund(&json!({"merchant_id": "m_1001", "out_trade_no": "unsigned-r", "out_refund_no": "unsigned-r-1", "amount": 700}))
        .await
        .expect_error(502, "channel_error");
    assert_eq!(
        h.get_refund("m_1001", "unsigned-r-1", false).await.body["status"],
        "pending"
    );
    // Its amount stays reserved: nothing is left to refund.
    h.refund(&json!({"merchant_id": "m_1001", "out_trade_no": "unsigned-r", "out_refund_no": "unsigned-r-2", "amount": 1}))
        .await
        .expect_error(409, "invalid_state");
    h.shutdown().await;
}

/// Before: WeChat `ABNORMAL` was `failed` (amount freed) and Alipay `fund_change = "N"` was
/// `succeeded` at once.
#[tokio::test]
async fn refunds_end_in_the_states_the_providers_define() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    h.paid("m_1001", "abn-1", "wechat_native", 1000).await;
    h.faults(json!({"refund_status": "ABNORMAL"})).await;
    let r = h
        .refund(&json!({"merchant_id": "m_1001", "out_trade_no": "abn-1", "out_refund_no": "abn-1-r", "amount": 1000}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "abnormal");
    h.refund(&json!({"merchant_id": "m_1001", "out_trade_no": "abn-1", "out_refund_no": "abn-1-r2", "amount": 1}))
        .await
        .expect_error(409, "invalid_state");
    let m = h.metrics().await;
    assert_eq!(
        support::metric(
            &m,
            r#"payroute_refunds_total{channel="m1001_wechat",outcome="abnormal"}"#
        ),
        Some(1.0)
    );

    h.faults(json!({"alipay_refund_pending": true})).await;
    h.paid("m_2002", "fc-n-1", "alipay_precreate", 1999).await;
    let r = h
        .refund(&json!({"merchant_id": "m_2002", "out_trade_no": "fc-n-1", "out_refund_no": "fc-n-1-r", "amount": 1999}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.body["status"], "pending",
        "fund_change N moved no money yet"
    );
    assert_eq!(
        h.get_payment("m_2002", "fc-n-1", false).await.body["refunded_amount"],
        0
    );
    let q = h.get_refund("m_2002", "fc-n-1-r", true).await;
    assert_eq!(q.body["status"], "succeeded", "{}", q.text);
    assert_eq!(
        h.get_payment("m_2002", "fc-n-1", false).await.body["refunded_amount"],
        1999
    );
    h.shutdown().await;
}

/// Before: Alipay's `ACQ.TRADE_STATUS_ERROR` on close was read as "paid", so closing a
/// trade that was already closed answered "the channel says the order was paid".
#[tokio::test]
async fn a_close_refused_for_its_state_learns_the_state_by_query() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    let r = h
        .create(&payment(
            "m_2002",
            "ali-closed",
            "alipay_precreate",
            500,
            json!({}),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        h.close("m_2002", "ali-closed").await.body["status"],
        "closed"
    );
    // As if the first close's answer had been lost: the record still says pending.
    rusqlite::Connection::open(h.db_path())
        .unwrap()
        .execute(
            "UPDATE payments SET status = 'pending' WHERE out_trade_no = 'ali-closed'",
            [],
        )
        .unwrap();
    let again = h.close("m_2002", "ali-closed").await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["status"], "closed");
    h.shutdown().await;
}

/// Before: the body was read into a map where the last duplicate key won.
#[tokio::test]
async fn a_key_given_twice_is_a_bad_request() {
    let h = Harness::start().await;
    let body = r#"{"merchant_id":"m_1001","out_trade_no":"dup-1","amount":1,"amount":100000,
        "currency":"CNY","method":"wechat_native","description":"x"}"#;
    let r = h.shop_send(Method::POST, "/v1/payments", body).await;
    r.expect_error(400, "invalid_request");
    assert!(r.error_message().contains("duplicate key"), "{}", r.text);
    h.shutdown().await;
}

/// Before: the API refused the replayed body because its `expires_at` was no longer a
/// minute ahead, though the order existed.
#[tokio::test]
async fn a_replay_after_the_expiry_window_answers_from_the_record() {
    let h = Harness::start().await;
    let expires = OffsetDateTime::now_utc() + time::Duration::seconds(62);
    let body = payment(
        "m_1001",
        "late-replay",
        "wechat_native",
        100,
        json!({"expires_at": expires.format(&Rfc3339).unwrap()}),
    );
    assert_eq!(h.create(&body).await.status, 201);
    // Real time must pass for the API's clock; 2.5s puts the order under a minute to go.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = h.create(&body).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    // A new order with that expiry is still refused.
    let r = h
        .create(&payment(
            "m_1001",
            "late-new",
            "wechat_native",
            100,
            json!({"expires_at": expires.format(&Rfc3339).unwrap()}),
        ))
        .await;
    r.expect_error(400, "invalid_request");
    h.shutdown().await;
}

/// Before: the per-shop limit spent a token on a request the per-merchant limit refused.
#[tokio::test]
async fn a_request_refused_by_one_limit_spends_no_token_of_another() {
    let limits = "limits:\n  - { name: per-shop, key: shop, rate: 2/h, burst: 2 }\n  - { name: per-merchant, key: merchant, rate: 1/h, burst: 1 }\n";
    let h = Harness::start_with(false, &format!("{}{limits}", support::RULES), "").await;
    let create = |m: &str, no: &str| payment(m, no, "wechat_native", 100, json!({}));
    assert_eq!(h.create(&create("m_1001", "lim-1")).await.status, 201);
    h.create(&create("m_1001", "lim-2"))
        .await
        .expect_error(429, "rate_limited");
    // The shop still has its second token (the shop's limit is checked first, so a
    // per-limit check would have spent it on the refused request).
    let r = h.create(&create("m_4004", "lim-3")).await;
    assert_eq!(r.status, 201, "{}", r.text);
    h.shutdown().await;
}

/// Before: `Retry-After` was ignored and the create retried at once.
#[tokio::test]
async fn a_providers_retry_after_beyond_the_deadline_is_not_retried_early() {
    let h = Harness::start().await;
    h.faults(json!({"fail_next": 2, "fail_status": 429, "fail_code": "FREQUENCY_LIMITED", "retry_after_secs": 5, "fail_ops": ["create"]}))
        .await;
    let r = h
        .create(&payment("m_1001", "ra-1", "wechat_native", 100, json!({})))
        .await;
    r.expect_error(503, "channel_unavailable");
    assert_eq!(r.body["payment"]["status"], "unknown");
    let m = h.metrics().await;
    assert_eq!(
        support::metric(
            &m,
            r#"payroute_retries_total{channel="m1001_wechat",reason="retryable"}"#
        ),
        None,
        "no retry inside the provider's Retry-After"
    );
    h.shutdown().await;
}
