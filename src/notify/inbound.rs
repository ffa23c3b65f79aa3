//! `POST /notify/{channel}`: a provider tells us an order was paid, closed or refunded.
//!
//! The channel verifies and decrypts ([`Channel::verify_notification`]); this module finds
//! the order by `out_trade_no` and the account the provider names, cross-checks that the
//! notifying channel holds the order's bound account, and applies the state through
//! `payment` — compare-and-set, with the shop event in the same transaction. The provider is
//! answered "success" only after that commit.
//!
//! # Answers
//! A notification that fails verification, or that we could not store, gets the provider's
//! failure answer: the provider retries, and a retry can help (a key rotation, a store
//! outage). A verified one for an order we do not have, for another account, or whose amount
//! does not match changes nothing and is acknowledged: no retry would change that. Every
//! outcome is counted in `payroute_notifications_received_total{channel,result}`.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use prometheus::{IntCounterVec, Opts, Registry};

use crate::channel::{Channel, Notification, NotifiedAccount};
use crate::live::{Live, LiveConfig};
use crate::payment::{now_ms, PaymentError, PaymentService, Routes};
use crate::store::PaymentRecord;

/// The label of a channel name that is not configured (labels stay bounded).
const UNKNOWN_CHANNEL: &str = "unknown";

pub struct Inbound {
    live: Arc<LiveConfig>,
    payments: Arc<PaymentService>,
    received: IntCounterVec,
}

/// How one notification ended, and whether the provider is told "success".
struct Outcome {
    result: &'static str,
    acknowledge: bool,
    message: String,
}

impl Outcome {
    fn ack(result: &'static str, message: impl Into<String>) -> Outcome {
        Outcome {
            result,
            acknowledge: true,
            message: message.into(),
        }
    }

    fn retry(result: &'static str, message: impl Into<String>) -> Outcome {
        Outcome {
            result,
            acknowledge: false,
            message: message.into(),
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
                "Provider notifications by channel and result (verified, duplicate, bad_signature, stale, probe, malformed, decrypt, wrong_app, wrong_account, unknown_order, mismatch, store_error).",
            ),
            &["channel", "result"],
        )?;
        registry.register(Box::new(received.clone()))?;
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
        let Some(channel) = live.channels.get(channel_name) else {
            self.count(UNKNOWN_CHANNEL, "unknown_channel");
            tracing::warn!(channel = %channel_name, "notification for a channel that is not configured");
            return crate::server::json_response(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"code": "FAIL", "message": "unknown channel"}),
            );
        };
        let (parts, body) = req.into_parts();
        let outcome = match Limited::new(body, live.config.server.max_body_bytes)
            .collect()
            .await
        {
            Ok(body) => {
                self.process(&live, channel, &parts.headers, &body.to_bytes())
                    .await
            }
            Err(e) => Outcome::retry("malformed", format!("reading the body: {e}")),
        };
        self.count(channel_name, outcome.result);
        if outcome.result != "verified" {
            tracing::warn!(channel = %channel_name, result = outcome.result, message = %outcome.message, "notification changed nothing");
        }
        channel.notification_answer(outcome.acknowledge, &outcome.message)
    }

    async fn process(
        &self,
        live: &Live,
        channel: &Channel,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Outcome {
        let notification = match channel.verify_notification(headers, body, now_ms() / 1000) {
            Ok(n) => n,
            // Signed by the provider for an app that is not this channel's: no retry helps.
            Err(e @ crate::channel::NotifyError::NotForThisApp(_)) => {
                return Outcome::ack(e.label(), e.to_string())
            }
            Err(e) => return Outcome::retry(e.label(), e.to_string()),
        };
        let routes = Routes {
            rules: &live.config.rules,
            channels: &live.channels,
            merchants: &live.config.merchants,
            public_base_url: &live.config.server.public_base_url,
            late_payments: &live.config.late_payments,
        };
        let payment = match self
            .find_payment(
                &routes,
                channel,
                notification.out_trade_no(),
                notification.account(),
            )
            .await
        {
            Ok(p) => p,
            Err(outcome) => return outcome,
        };
        let before = (payment.status, payment.version);
        match notification {
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
                let refund = match self
                    .payments
                    .store()
                    .get_refund(&payment.merchant_id, &out_refund_no)
                    .await
                {
                    Ok(Some(r)) if r.payment_id == payment.payment_id => r,
                    Ok(_) => {
                        return Outcome::ack(
                            "unknown_order",
                            format!("no refund {out_refund_no:?} of this order"),
                        )
                    }
                    Err(e) => return Outcome::retry("store_error", e.to_string()),
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
        }
    }

    /// The payment the notification is about: its `out_trade_no`, at the account the
    /// provider names, bound to an account this channel holds.
    async fn find_payment(
        &self,
        routes: &Routes<'_>,
        channel: &Channel,
        out_trade_no: &str,
        named: &NotifiedAccount,
    ) -> Result<PaymentRecord, Outcome> {
        let candidates = self
            .payments
            .store()
            .payments_by_trade_no(out_trade_no)
            .await
            .map_err(|e| Outcome::retry("store_error", e.to_string()))?;
        if candidates.is_empty() {
            return Err(Outcome::ack(
                "unknown_order",
                format!("no order {out_trade_no:?}"),
            ));
        }
        let named_matches = |p: &PaymentRecord| match &p.account {
            Some(a) => {
                let same = |n: &Option<String>, b: &Option<String>| n.is_none() || n == b;
                same(&named.mchid, &a.mchid)
                    && same(&named.sub_mchid, &a.sub_mchid)
                    && same(&named.app_id, &a.app_id)
            }
            // Bound before accounts were stored: the channel name is all there is.
            None => p.channel == channel.name(),
        };
        let held_here = |p: &PaymentRecord| match &p.account {
            Some(a) => channel.account(&routes.sub_merchant(&p.merchant_id)) == *a,
            None => p.channel == channel.name(),
        };
        let mut named_here = candidates.into_iter().filter(named_matches).peekable();
        if named_here.peek().is_none() {
            return Err(Outcome::ack(
                "wrong_account",
                format!("order {out_trade_no:?} is bound to another account than the notification names"),
            ));
        }
        named_here.find(held_here).ok_or_else(|| {
            Outcome::ack(
                "wrong_account",
                format!(
                    "order {out_trade_no:?} is not bound to channel {:?}'s account",
                    channel.name()
                ),
            )
        })
    }

    fn count(&self, channel: &str, result: &str) {
        self.received.with_label_values(&[channel, result]).inc();
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
