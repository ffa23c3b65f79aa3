//! `POST /notify/{channel}`: a provider tells us an order was paid, closed or refunded.
//!
//! The channel verifies and decrypts ([`Channel::verify_notification`]); this module finds
//! the order by `out_trade_no` and the account the provider names (an Alipay ISV order by
//! the signed `seller_id`: the platform's `app_id` is every merchant's), checks that a live
//! channel holds the order's bound account, and applies the state through `payment` —
//! compare-and-set, with the shop event in the same transaction. The provider is answered
//! "success" only after that commit.
//!
//! # Renamed channels
//! Providers keep the `notify_url` of the create: after ops rename a channel (same account)
//! the old name is gone. A notification to a name that is not configured, or whose channel
//! does not verify it (the name now belongs to another account), is verified by the live
//! channels in turn; the order it resolves to is applied through a channel that holds the
//! order's bound account and verifies the notification with that account's keys. It is
//! counted under that channel's name.
//!
//! # Answers
//! A notification that fails verification, or that we could not store, gets the provider's
//! failure answer: the provider retries, and a retry can help (a key rotation, a store
//! outage). So does one we cannot resolve to exactly one order (`ambiguous`: more than one
//! record matches; `unresolved`: an ISV notification without a seller, or the order's
//! account held by no live channel) — it is never guessed, and ops can restore the account.
//! A verified one for an order we do not have, for another account, or whose amount does
//! not match changes nothing and is acknowledged: no retry would change that. Every outcome
//! is counted in `payroute_notifications_received_total{channel,result}`.
//!
//! Which failure it is shows in the answer where the protocol allows ([`NotifyAnswer`]):
//! WeChat Pay gets `401` for what does not verify (`bad_signature`, `stale`, `probe`,
//! `decrypt`), `400` for what is `malformed`, and `500` only for payroute's own trouble
//! (`store_error`, `ambiguous`, `unresolved`), so that API 5xx alerts mean payroute and a
//! forger cannot raise them. Alipay's protocol answers `200 fail` to all of them.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use prometheus::{IntCounterVec, Opts, Registry};

use crate::channel::{Channel, Notification, NotifiedAccount, NotifyAnswer, NotifyError};
use crate::clock::now_ms;
use crate::domain::Account;
use crate::live::{Live, LiveConfig};
use crate::payment::{PaymentError, PaymentService, Routes};
use crate::store::PaymentRecord;

/// The label of a channel name that is not configured (labels stay bounded).
const UNKNOWN_CHANNEL: &str = "unknown";
/// Its only `result`.
const UNKNOWN_CHANNEL_RESULT: &str = "unknown_channel";
/// Every `result` of a configured channel's notification. Each starts at 0 for every
/// channel: a new result must be listed here, or its series appears only with its first
/// notification and a rate() alert on it misses that one.
const RESULTS: [&str; 14] = [
    "verified",
    "duplicate",
    "bad_signature",
    "stale",
    "probe",
    "malformed",
    "decrypt",
    "wrong_app",
    "wrong_account",
    "ambiguous",
    "unresolved",
    "unknown_order",
    "mismatch",
    "store_error",
];

pub struct Inbound {
    live: Arc<LiveConfig>,
    payments: Arc<PaymentService>,
    received: IntCounterVec,
}

/// How one notification ended, and how the provider is answered.
struct Outcome {
    result: &'static str,
    answer: NotifyAnswer,
    message: String,
}

impl Outcome {
    fn ack(result: &'static str, message: impl Into<String>) -> Outcome {
        Outcome {
            result,
            answer: NotifyAnswer::Acknowledged,
            message: message.into(),
        }
    }

    /// payroute's own trouble: the provider resends, and a resend may help.
    fn retry(result: &'static str, message: impl Into<String>) -> Outcome {
        Outcome {
            result,
            answer: NotifyAnswer::Failed,
            message: message.into(),
        }
    }

    /// Refused for what the notification is (see [`NotifyError::answer`]).
    fn refused(e: &NotifyError) -> Outcome {
        Outcome {
            result: e.label(),
            answer: e.answer(),
            message: e.to_string(),
        }
    }
}

impl Inbound {
    pub fn new(
        live: Arc<LiveConfig>,
        payments: Arc<PaymentService>,
        registry: &Registry,
    ) -> prometheus::Result<Inbound> {
        let received = IntCounterVec::new(
            Opts::new(
                "payroute_notifications_received_total",
                format!(
                    "Provider notifications by channel and result ({}).",
                    RESULTS.join(", ")
                ),
            ),
            &["channel", "result"],
        )?;
        registry.register(Box::new(received.clone()))?;
        // Every channel's series start at 0, and a channel added by a reload gets its own.
        let series = received.clone();
        let start_at_zero = move |config: &crate::config::Config| {
            for channel in config.channels.keys() {
                for result in RESULTS {
                    series.with_label_values(&[channel.as_str(), result]);
                }
            }
        };
        received.with_label_values(&[UNKNOWN_CHANNEL, UNKNOWN_CHANNEL_RESULT]);
        start_at_zero(&live.load().config);
        live.on_reload(start_at_zero);
        Ok(Inbound {
            live,
            payments,
            received,
        })
    }

    pub async fn handle(
        &self,
        channel_name: &str,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let live = self.live.load();
        let named = live.channels.get(channel_name);
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, live.config.server.max_body_bytes)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                // Too large, or cut off by the sender: not payroute's fault.
                let outcome = Outcome {
                    answer: NotifyAnswer::Malformed,
                    ..Outcome::retry("malformed", format!("reading the body: {e}"))
                };
                return match named {
                    Some(ch) => self.answer(ch, outcome),
                    None => self.unknown_channel(channel_name),
                };
            }
        };
        let now = now_ms() / 1000;
        // The named channel first; the others only when it cannot verify (a renamed
        // channel's old name, or a name given to another account since).
        let mut named_error = None;
        let mut verified = None;
        for ch in named.into_iter().chain(
            live.channels
                .by_name()
                .into_iter()
                .filter(|ch| ch.name() != channel_name)
                .filter(|ch| ch.may_be_for_this_account(&parts.headers, &body)),
        ) {
            match ch.verify_notification(&parts.headers, &body, now) {
                Ok(n) => {
                    verified = Some((ch, n));
                    break;
                }
                Err(e) if ch.name() == channel_name => named_error = Some(e),
                Err(_) => {}
            }
        }
        let Some((verifier, notification)) = verified else {
            return match (named, named_error) {
                // One signed for an app that is not this channel's (nor any other's) is
                // acknowledged: no retry helps. The rest is refused as what it is.
                (Some(ch), Some(e)) => self.answer(ch, Outcome::refused(&e)),
                _ => self.unknown_channel(channel_name),
            };
        };
        if verifier.name() != channel_name {
            tracing::info!(channel = %channel_name, verified_by = %verifier.name(), "notification to a channel name that does not hold it, verified by another channel");
        }
        let (applier, outcome) = self
            .process(&live, verifier, notification, &parts.headers, &body, now)
            .await;
        self.count(applier.name(), outcome.result);
        if outcome.result != "verified" {
            tracing::warn!(channel = %applier.name(), result = outcome.result, message = %outcome.message, "notification changed nothing");
        }
        applier.notification_answer(outcome.answer, &outcome.message)
    }

    /// Counts `outcome` under `channel` and answers the provider in its words.
    fn answer(&self, channel: &Channel, outcome: Outcome) -> Response<Full<Bytes>> {
        self.count(channel.name(), outcome.result);
        tracing::warn!(channel = %channel.name(), result = outcome.result, message = %outcome.message, "notification changed nothing");
        channel.notification_answer(outcome.answer, &outcome.message)
    }

    fn unknown_channel(&self, channel_name: &str) -> Response<Full<Bytes>> {
        self.count(UNKNOWN_CHANNEL, UNKNOWN_CHANNEL_RESULT);
        tracing::warn!(channel = %channel_name, "notification for a channel that is not configured, verified by none");
        crate::server::json_response(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"code": "FAIL", "message": "unknown channel"}),
        )
    }

    /// Applies a verified notification; the channel it was applied through (the one that
    /// holds the order's account, when found) and how it ended.
    async fn process<'c>(
        &self,
        live: &'c Live,
        verifier: &'c Arc<Channel>,
        notification: Notification,
        headers: &http::HeaderMap,
        body: &[u8],
        now: i64,
    ) -> (&'c Arc<Channel>, Outcome) {
        let routes = live.routes();
        let payment = match self
            .find_payment(
                &routes,
                verifier.name(),
                notification.out_trade_no(),
                notification.account(),
            )
            .await
        {
            Ok(p) => p,
            Err(outcome) => return (verifier, outcome),
        };
        let channel = match holder(
            &routes,
            verifier,
            &payment,
            &notification,
            headers,
            body,
            now,
        ) {
            Ok(ch) => ch,
            Err(outcome) => return (verifier, outcome),
        };
        let before = (payment.status, payment.version);
        let outcome = match notification {
            Notification::Payment { state, .. } => {
                match self
                    .payments
                    .apply_notified(&routes, payment, state, channel)
                    .await
                {
                    Ok(after) if (after.status, after.version) != before => {
                        Outcome::ack("verified", format!("payment {}", after.status.as_str()))
                    }
                    Ok(_) => Outcome::ack("duplicate", "already applied"),
                    Err(e) => failed(e),
                }
            }
            Notification::Refund {
                out_refund_no,
                state,
                ..
            } => {
                let refund = match self.payments.refund_of(&payment, &out_refund_no).await {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        return (
                            channel,
                            Outcome::ack(
                                "unknown_order",
                                format!("no refund {out_refund_no:?} of this order"),
                            ),
                        )
                    }
                    Err(e) => return (channel, Outcome::retry("store_error", e.to_string())),
                };
                let before = refund.status;
                match self
                    .payments
                    .apply_notified_refund(refund, &payment, state)
                    .await
                {
                    Ok(after) if after.status != before => {
                        Outcome::ack("verified", format!("refund {}", after.status.as_str()))
                    }
                    Ok(_) => Outcome::ack("duplicate", "already applied"),
                    Err(e) => failed(e),
                }
            }
        };
        (channel, outcome)
    }

    /// The one payment the notification is about: its `out_trade_no` at the account the
    /// provider names. `out_trade_no` is unique per merchant only, so every record with it
    /// is judged against the signed account; exactly one must match.
    async fn find_payment(
        &self,
        routes: &Routes<'_>,
        verified_by: &str,
        out_trade_no: &str,
        named: &NotifiedAccount,
    ) -> Result<PaymentRecord, Outcome> {
        let candidates = self
            .payments
            .payments_numbered(out_trade_no)
            .await
            .map_err(|e| Outcome::retry("store_error", e.to_string()))?;
        if candidates.is_empty() {
            return Err(Outcome::ack(
                "unknown_order",
                format!("no order {out_trade_no:?}"),
            ));
        }
        let mut unresolved = 0;
        let mut matching = Vec::new();
        for p in candidates {
            match names(named, &p, routes.bound_account(&p).as_ref(), verified_by) {
                Named::Yes => matching.push(p),
                Named::No => {}
                Named::Unresolved => unresolved += 1,
            }
        }
        match matching.len() {
            1 => Ok(matching.remove(0)),
            0 if unresolved > 0 => Err(Outcome::retry(
                "unresolved",
                format!("order {out_trade_no:?} is bound to an Alipay seller, and the notification names none (seller_id)"),
            )),
            0 => Err(Outcome::ack(
                "wrong_account",
                format!("order {out_trade_no:?} is bound to another account than the notification names"),
            )),
            n => Err(Outcome::retry(
                "ambiguous",
                format!("{n} orders {out_trade_no:?} match the account the notification names; none was applied"),
            )),
        }
    }

    fn count(&self, channel: &str, result: &str) {
        self.received.with_label_values(&[channel, result]).inc();
    }
}

/// Whether a notification naming `named` is about the record `p`.
enum Named {
    Yes,
    No,
    /// The record is bound to something the notification does not name (an ISV seller).
    Unresolved,
}

fn names(
    named: &NotifiedAccount,
    p: &PaymentRecord,
    bound: Option<&Account>,
    verified_by: &str,
) -> Named {
    let Some(a) = bound else {
        // Bound before accounts were stored: the channel name is all there is.
        return if p.channel == verified_by {
            Named::Yes
        } else {
            Named::No
        };
    };
    let same = |n: &Option<String>, b: &Option<String>| n.is_none() || n == b;
    if !(same(&named.mchid, &a.mchid)
        && same(&named.sub_mchid, &a.sub_mchid)
        && same(&named.app_id, &a.app_id))
    {
        return Named::No;
    }
    // An ISV order is the merchant's, whoever's app it went through: the seller decides.
    match (&a.seller, &named.seller_id) {
        (None, _) => Named::Yes,
        (Some(_), None) => Named::Unresolved,
        (Some(bound), Some(seller)) if bound == seller => Named::Yes,
        (Some(_), Some(_)) => Named::No,
    }
}

/// The live channel through which `payment` is to be changed: the verifying channel if it
/// holds the order's bound account, else one that does — which must verify the
/// notification with its own keys (and read it the same). None holding it: the provider
/// retries until ops restore the account.
fn holder<'c>(
    routes: &Routes<'c>,
    verifier: &'c Arc<Channel>,
    payment: &PaymentRecord,
    notification: &Notification,
    headers: &http::HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<&'c Arc<Channel>, Outcome> {
    let Some(bound) = &routes.bound_account(payment) else {
        // Matched on the verifying channel's name (see `names`).
        return Ok(verifier);
    };
    let sub = routes.sub_merchant(&payment.merchant_id);
    if verifier.account(&sub) == *bound {
        return Ok(verifier);
    }
    let Some(holder) = routes.channels.holding(bound, &sub) else {
        return Err(Outcome::retry(
            "unresolved",
            format!(
                "order {:?} is bound to {}, which no configured channel holds",
                payment.out_trade_no,
                crate::stranded::describe(bound)
            ),
        ));
    };
    // The notification verified already: the holder disagreeing is our channels' config
    // contradicting itself, not the sender's fault — answered as payroute's.
    match holder.verify_notification(headers, body, now) {
        Ok(again) if again == *notification => Ok(holder),
        Ok(_) => Err(Outcome::retry(
            "malformed",
            format!(
                "channel {:?} reads the notification differently",
                holder.name()
            ),
        )),
        Err(e) => Err(Outcome::retry(
            e.label(),
            format!(
                "channel {:?}, which holds the order's account: {e}",
                holder.name()
            ),
        )),
    }
}

/// A verified notification the payment layer refused.
fn failed(e: PaymentError) -> Outcome {
    match e {
        // The cross-check (amount, currency, a refund's figures) failed: nothing changed,
        // and the provider resending it would not change that.
        PaymentError::Channel { error, .. } => Outcome::ack("mismatch", error.to_string()),
        PaymentError::Store(e) => Outcome::retry("store_error", e.to_string()),
        other => Outcome::retry("store_error", other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Method, PaymentStatus};

    fn record(account: Option<Account>) -> PaymentRecord {
        PaymentRecord {
            payment_id: "pay_1".into(),
            merchant_id: "m_4004".into(),
            shop_id: "s".into(),
            out_trade_no: "o".into(),
            amount: 100,
            currency: "CNY".into(),
            method: Method::AlipayPrecreate,
            status: PaymentStatus::Pending,
            channel: "platform_alipay".into(),
            account,
            rule: "r".into(),
            action: None,
            provider_trade_no: None,
            refunded_amount: 0,
            request_hash: String::new(),
            request: serde_json::json!({}),
            error_code: None,
            error_message: None,
            attempt_until: None,
            created_at: 0,
            updated_at: 0,
            paid_at: None,
            expires_at: 0,
            version: 0,
            late: false,
        }
    }

    fn alipay(mode: &str, seller: Option<&str>) -> Account {
        Account {
            provider: "alipay".into(),
            mode: mode.into(),
            mchid: None,
            sub_mchid: None,
            app_id: Some("2021000000000001".into()),
            seller: seller.map(str::to_string),
        }
    }

    fn notified(app_id: &str, seller_id: Option<&str>) -> NotifiedAccount {
        NotifiedAccount {
            app_id: Some(app_id.into()),
            seller_id: seller_id.map(str::to_string),
            auth_app_id: Some("2021000000000777".into()),
            ..NotifiedAccount::default()
        }
    }

    fn judged(named: &NotifiedAccount, p: &PaymentRecord) -> &'static str {
        judged_by(named, p, "platform_alipay")
    }

    fn judged_by(named: &NotifiedAccount, p: &PaymentRecord, verified_by: &str) -> &'static str {
        match names(named, p, p.account.as_ref(), verified_by) {
            Named::Yes => "yes",
            Named::No => "no",
            Named::Unresolved => "unresolved",
        }
    }

    /// An ISV order is the seller's: the platform's app_id alone names every merchant's.
    #[test]
    fn isv_orders_are_matched_on_the_signed_seller() {
        let isv = record(Some(alipay("isv", Some("2088000000004004"))));
        let app = "2021000000000001";
        assert_eq!(
            judged(&notified(app, Some("2088000000004004")), &isv),
            "yes"
        );
        assert_eq!(judged(&notified(app, Some("2088000000003003")), &isv), "no");
        assert_eq!(judged(&notified(app, None), &isv), "unresolved");
        assert_eq!(
            judged(
                &notified("2021000000009999", Some("2088000000004004")),
                &isv
            ),
            "no"
        );
        // Direct: the app is the merchant's own; its seller is not bound.
        let direct = record(Some(alipay("direct", None)));
        assert_eq!(
            judged(&notified(app, Some("2088000000000001")), &direct),
            "yes"
        );
        // Bound before accounts were stored: by the verifying channel's name only.
        let legacy = record(None);
        assert_eq!(judged(&notified(app, None), &legacy), "yes");
        assert_eq!(judged_by(&notified(app, None), &legacy, "other"), "no");
    }
}
