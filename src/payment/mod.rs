//! The payment lifecycle: route, bind, call the channel with the retry rules of DESIGN.md §7,
//! store the outcome; query the bound channel later.
//!
//! # Safety of retries
//! - The binding (payment record with its channel) is written before any channel call, so
//!   every later call for the order goes to the same channel, whatever the rules say then.
//! - Failover to a `fallback` channel happens only when the request certainly reached no
//!   channel (`NothingSent`); the record is rebound before the fallback is called.
//! - A timeout, a reset after sending or a 5xx is retried on the same channel with the same
//!   `out_trade_no` (the provider deduplicates on it) within one deadline, never elsewhere.
//! - A record has one in-flight attempt at a time (`attempt_until`, compare-and-set on
//!   `version`): a concurrent twin gets `request_in_progress`, never a second upstream call.
//!
//! # Limits
//! After a create ends in `unknown`, the channel is not queried yet (the reconciliation
//! worker will do it); the shop's retry with the same `out_trade_no` re-sends the create.

mod refund;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::json;
use time::OffsetDateTime;

use crate::channel::{
    Channel, ChannelError, ChannelSet, ErrorKind, OrderRequest, OrderState, SubMerchant,
};
use crate::domain::{Method, PaymentStatus};
use crate::resilience::backoff;
use crate::routing::{NoRoute, PaymentFacts, Rules};
use crate::store::{PaymentRecord, Store, StoreError};

/// How long a payment stays payable when the shop does not say.
const DEFAULT_EXPIRY_MS: i64 = 2 * 3600 * 1000;

/// Retries after the first attempt, within the channel's deadline.
const MAX_RETRIES: u32 = 2;

pub use refund::{NewRefund, RefundOutcome};

/// A validated create request (the API checked every field).
#[derive(Clone, Debug)]
pub struct NewPayment {
    pub merchant_id: String,
    pub out_trade_no: String,
    pub amount: u64,
    pub currency: String,
    pub method: Method,
    pub description: String,
    pub openid: Option<String>,
    pub client_ip: Option<String>,
    /// As requested; `None` means the default (2 hours after the first attempt), which is
    /// fixed in the record so that a retry sends the same order.
    pub expires_at: Option<OffsetDateTime>,
    pub return_url: Option<String>,
    pub attach: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

impl NewPayment {
    /// The request as stored: what a replay is compared with and a retry re-sends.
    fn canonical(&self) -> serde_json::Value {
        json!({
            "merchant_id": self.merchant_id, "out_trade_no": self.out_trade_no,
            "amount": self.amount, "currency": self.currency, "method": self.method,
            "description": self.description, "openid": self.openid, "client_ip": self.client_ip,
            "expires_at": self.expires_at.map(|t| t.unix_timestamp()), "return_url": self.return_url,
            "attach": self.attach, "metadata": self.metadata,
        })
    }
}

/// What a payment operation needs from the live config.
pub struct Routes<'a> {
    pub rules: &'a Rules,
    pub channels: &'a ChannelSet,
    pub merchants: &'a HashMap<String, SubMerchant>,
    pub public_base_url: &'a str,
}

impl Routes<'_> {
    /// The channel an order is bound to, and the merchant's sub-merchant ids for it.
    fn bound(
        &self,
        channel: &str,
        merchant_id: &str,
    ) -> Result<(&Arc<Channel>, SubMerchant), PaymentError> {
        let ch = self
            .channels
            .get(channel)
            .ok_or_else(|| PaymentError::ChannelMissing(channel.to_string()))?;
        Ok((ch, self.sub_merchant(merchant_id)))
    }

    fn sub_merchant(&self, merchant_id: &str) -> SubMerchant {
        self.merchants.get(merchant_id).cloned().unwrap_or_default()
    }
}

#[derive(Debug)]
pub enum CreateOutcome {
    Created(PaymentRecord),
    /// Same request seen before: the stored result.
    Replayed(PaymentRecord),
}

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error(transparent)]
    NoRoute(#[from] NoRoute),
    #[error("{error}")]
    Channel {
        error: ChannelError,
        payment: Box<PaymentRecord>,
    },
    /// A replay of a request whose final answer was an error.
    #[error("{message}")]
    Stored { code: String, message: String },
    #[error("bound channel {0:?} is no longer configured")]
    ChannelMissing(String),
    #[error("this out_trade_no was used with a different request")]
    IdempotencyMismatch,
    #[error("a request for this out_trade_no is in progress")]
    InProgress,
    #[error("payment not found")]
    NotFound,
    /// The operation does not fit the payment's state (close a paid order, say).
    #[error("{message}")]
    InvalidState {
        message: String,
        payment: Box<PaymentRecord>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct PaymentMetrics {
    payments: IntCounterVec,
    decisions: IntCounterVec,
    fees: IntCounterVec,
}

impl PaymentMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<PaymentMetrics> {
        let payments = IntCounterVec::new(
            Opts::new(
                "payroute_payments_total",
                "Payment outcomes by channel and method.",
            ),
            &["channel", "method", "outcome"],
        )?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "payroute_route_decisions_total",
                "Routing decisions by rule and channel.",
            ),
            &["rule", "channel"],
        )?;
        let fees = IntCounterVec::new(
            Opts::new(
                "payroute_fees_estimated_total",
                "Estimated channel fees of succeeded payments, in minor units (fen), from fee_rate.",
            ),
            &["channel"],
        )?;
        registry.register(Box::new(payments.clone()))?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(fees.clone()))?;
        Ok(PaymentMetrics {
            payments,
            decisions,
            fees,
        })
    }

    fn outcome(&self, p: &PaymentRecord, outcome: &str) {
        self.payments
            .with_label_values(&[p.channel.as_str(), p.method.as_str(), outcome])
            .inc();
    }
}

pub struct PaymentService {
    store: Arc<dyn Store>,
    metrics: PaymentMetrics,
}

impl PaymentService {
    pub fn new(store: Arc<dyn Store>, registry: &Registry) -> prometheus::Result<PaymentService> {
        Ok(PaymentService {
            store,
            metrics: PaymentMetrics::new(registry)?,
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub async fn create(
        &self,
        routes: &Routes<'_>,
        shop_id: &str,
        req: NewPayment,
    ) -> Result<CreateOutcome, PaymentError> {
        let now = now_ms();
        let request = req.canonical();
        let request_hash = sha256_hex(request.to_string().as_bytes());
        let facts = PaymentFacts {
            merchant: &req.merchant_id,
            shop: shop_id,
            method: req.method,
            amount: req.amount,
            currency: &req.currency,
            metadata: &req.metadata,
            out_trade_no: &req.out_trade_no,
            china_minute: china_minute(now),
        };
        let decision = match routes.rules.decide(&facts) {
            Ok(d) => d,
            Err(no_route) => {
                // The rules may have changed since this order was bound: a replay of an
                // existing order still answers from its binding.
                return match self
                    .store
                    .get_payment(&req.merchant_id, &req.out_trade_no)
                    .await?
                {
                    Some(existing) => self.replay(routes, existing, &request_hash, &req).await,
                    None => Err(no_route.into()),
                };
            }
        };
        let fallback = decision.fallback.to_vec();
        let rec = PaymentRecord {
            payment_id: new_id("pay"),
            merchant_id: req.merchant_id.clone(),
            shop_id: shop_id.to_string(),
            out_trade_no: req.out_trade_no.clone(),
            amount: req.amount,
            currency: req.currency.clone(),
            method: req.method,
            status: PaymentStatus::Pending,
            channel: decision.channel.to_string(),
            rule: decision.rule_label().to_string(),
            action: None,
            provider_trade_no: None,
            refunded_amount: 0,
            request_hash,
            request,
            error_code: None,
            error_message: None,
            attempt_until: Some(now + attempt_window_ms(routes, decision.channel)),
            created_at: now,
            updated_at: now,
            paid_at: None,
            expires_at: req
                .expires_at
                .map_or(now + DEFAULT_EXPIRY_MS, |t| t.unix_timestamp() * 1000),
            version: 0,
        };
        match self.store.insert_payment(&rec).await? {
            None => {
                self.metrics
                    .decisions
                    .with_label_values(&[rec.rule.as_str(), rec.channel.as_str()])
                    .inc();
                self.attempt(routes, rec, &req, fallback)
                    .await
                    .map(CreateOutcome::Created)
            }
            Some(existing) => self.replay(routes, existing, &rec.request_hash, &req).await,
        }
    }

    async fn replay(
        &self,
        routes: &Routes<'_>,
        mut existing: PaymentRecord,
        hash: &str,
        req: &NewPayment,
    ) -> Result<CreateOutcome, PaymentError> {
        let now = now_ms();
        check_replay(
            (&existing.request_hash, hash),
            existing.attempt_until,
            existing.status == PaymentStatus::Failed,
            (&existing.error_code, &existing.error_message),
        )?;
        if existing.action.is_some() || existing.status.is_final() {
            self.metrics.outcome(&existing, "replayed");
            return Ok(CreateOutcome::Replayed(existing));
        }
        // The last attempt ended without an answer (timeout, nothing sent, a crash):
        // take the record over and send the same order to the same channel again.
        existing.attempt_until = Some(now + attempt_window_ms(routes, &existing.channel));
        existing.updated_at = now;
        if !self.store.update_payment(&mut existing).await? {
            return Err(PaymentError::InProgress);
        }
        self.attempt(routes, existing, req, Vec::new())
            .await
            .map(CreateOutcome::Created)
    }

    async fn attempt(
        &self,
        routes: &Routes<'_>,
        mut rec: PaymentRecord,
        req: &NewPayment,
        fallback: Vec<String>,
    ) -> Result<PaymentRecord, PaymentError> {
        let sub = routes.sub_merchant(&rec.merchant_id);
        let mut fallback = fallback.into_iter();
        loop {
            let Some(channel) = routes.channels.get(&rec.channel) else {
                rec.attempt_until = None;
                self.save(&mut rec).await?;
                return Err(PaymentError::ChannelMissing(rec.channel.clone()));
            };
            let notify_url = format!("{}/notify/{}", routes.public_base_url, rec.channel);
            let expires_at = OffsetDateTime::from_unix_timestamp(rec.expires_at / 1000)
                .map_err(|_| StoreError::Corrupt(format!("expires_at {}", rec.expires_at)))?;
            let order = OrderRequest {
                out_trade_no: &req.out_trade_no,
                amount: req.amount,
                currency: &req.currency,
                method: req.method,
                description: &req.description,
                expires_at,
                notify_url: &notify_url,
                openid: req.openid.as_deref(),
                client_ip: req.client_ip.as_deref(),
                attach: req.attach.as_deref(),
                return_url: req.return_url.as_deref(),
                sub: &sub,
            };
            let result = with_retries(channel, |d| channel.create(&order, d)).await;
            rec.updated_at = now_ms();
            match result {
                Ok(created) => {
                    rec.action = Some(created.action);
                    rec.provider_trade_no =
                        created.provider_trade_no.or(rec.provider_trade_no.take());
                    rec.status = PaymentStatus::Pending;
                    rec.error_code = None;
                    rec.error_message = None;
                    rec.attempt_until = None;
                    self.save(&mut rec).await?;
                    self.metrics.outcome(&rec, "created");
                    return Ok(rec);
                }
                Err(e) if e.nothing_sent() => {
                    if let Some(next) = fallback.next() {
                        tracing::warn!(channel = %rec.channel, fallback = %next, error = %e, "nothing reached the channel; failing over");
                        channel.metrics().retried(&rec.channel, "failover");
                        self.metrics.outcome(&rec, "failed_over");
                        rec.channel = next;
                        self.save(&mut rec).await?;
                        continue;
                    }
                    return Err(self
                        .fail(rec, e, PaymentStatus::Pending, "unavailable")
                        .await);
                }
                Err(e) => {
                    if let ErrorKind::Rejected(code) = &e.kind {
                        if ["ORDERPAID", "ACQ.TRADE_HAS_SUCCESS"].contains(&code.as_str()) {
                            // Paid already (an earlier attempt went through): learn the state
                            // from a verified query. Never mark such an order failed.
                            let query = |d| channel.query(&rec.out_trade_no, &sub, d);
                            return match with_retries(channel, query).await {
                                Ok(state) => self.apply_state(rec, state, channel).await,
                                Err(q) => {
                                    Err(self.fail(rec, q, PaymentStatus::Unknown, "error").await)
                                }
                            };
                        }
                        return Err(self.fail(rec, e, PaymentStatus::Failed, "rejected").await);
                    }
                    let (status, outcome) = match e.kind {
                        ErrorKind::ProviderRetryable(_) => (PaymentStatus::Pending, "unavailable"),
                        ErrorKind::Timeout | ErrorKind::Transport | ErrorKind::ServerError => {
                            (PaymentStatus::Unknown, "timeout")
                        }
                        _ => (PaymentStatus::Unknown, "error"),
                    };
                    return Err(self.fail(rec, e, status, outcome).await);
                }
            }
        }
    }

    /// Stores a failed attempt and turns it into the error the shop sees.
    async fn fail(
        &self,
        mut rec: PaymentRecord,
        error: ChannelError,
        status: PaymentStatus,
        outcome: &str,
    ) -> PaymentError {
        // Attempts run only for orders the channel has not answered yet (pending or unknown,
        // no action), so the failure alone decides what the order is now.
        rec.status = status;
        rec.error_code = Some(api_code(&error).to_string());
        rec.error_message = Some(error.to_string());
        rec.attempt_until = None;
        self.metrics.outcome(&rec, outcome);
        tracing::warn!(payment_id = %rec.payment_id, channel = %rec.channel, error = %error, "channel call failed");
        if let Err(e) = self.save(&mut rec).await {
            return e;
        }
        PaymentError::Channel {
            error,
            payment: Box::new(rec),
        }
    }

    async fn save(&self, rec: &mut PaymentRecord) -> Result<(), PaymentError> {
        if self.store.update_payment(rec).await? {
            Ok(())
        } else {
            // Only the holder of `attempt_until` writes during an attempt, so a lost race here
            // means two writers: refuse rather than overwrite.
            Err(PaymentError::InProgress)
        }
    }

    /// The stored payment; with `refresh`, its bound channel is asked first.
    pub async fn get(
        &self,
        routes: &Routes<'_>,
        merchant_id: &str,
        out_trade_no: &str,
        refresh: bool,
    ) -> Result<PaymentRecord, PaymentError> {
        let rec = self
            .store
            .get_payment(merchant_id, out_trade_no)
            .await?
            .ok_or(PaymentError::NotFound)?;
        if !refresh {
            return Ok(rec);
        }
        let (channel, sub) = routes.bound(&rec.channel, merchant_id)?;
        match with_retries(channel, |d| channel.query(out_trade_no, &sub, d)).await {
            Ok(state) => self.apply_state(rec, state, channel).await,
            // The channel has no such order (nothing was ever created there).
            Err(e) if e.kind == ErrorKind::NotFound => Ok(rec),
            Err(error) => Err(PaymentError::Channel {
                error,
                payment: Box::new(rec),
            }),
        }
    }

    /// Closes an unpaid order at its bound channel. Never closes a paid one: when the
    /// channel says it was paid, the payment becomes `succeeded` and the close is refused.
    pub async fn close(
        &self,
        routes: &Routes<'_>,
        merchant_id: &str,
        out_trade_no: &str,
    ) -> Result<PaymentRecord, PaymentError> {
        let rec = self
            .store
            .get_payment(merchant_id, out_trade_no)
            .await?
            .ok_or(PaymentError::NotFound)?;
        let refuse = |message: &str, rec: PaymentRecord| PaymentError::InvalidState {
            message: message.to_string(),
            payment: Box::new(rec),
        };
        match rec.status {
            PaymentStatus::Closed => return Ok(rec),
            PaymentStatus::Succeeded => {
                return Err(refuse("the payment succeeded; refund it instead", rec))
            }
            _ => {}
        }
        if rec.attempt_until.is_some_and(|t| t > now_ms()) {
            return Err(PaymentError::InProgress);
        }
        let (channel, sub) = routes.bound(&rec.channel, merchant_id)?;
        match with_retries(channel, |d| channel.close(out_trade_no, &sub, d)).await {
            Ok(()) => {}
            Err(e) if paid_refusal(&e) => {
                let state = with_retries(channel, |d| channel.query(out_trade_no, &sub, d))
                    .await
                    .map_err(|error| PaymentError::Channel { error, payment: Box::new(rec.clone()) })?;
                let rec = self.apply_state(rec, state, channel).await?;
                return Err(refuse("the channel says the order was paid; it was not closed", rec));
            }
            // Never reached the channel (a failed create): nothing there to close.
            Err(e) if e.kind == ErrorKind::NotFound && rec.action.is_none() => {}
            Err(e) if e.kind == ErrorKind::NotFound => {
                return Err(refuse(
                    "the channel does not know the order yet (the payer has not opened it); it expires at expires_at",
                    rec,
                ))
            }
            Err(error) => return Err(PaymentError::Channel { error, payment: Box::new(rec) }),
        }
        let mut rec = rec;
        rec.status = PaymentStatus::Closed;
        rec.updated_at = now_ms();
        if !self.store.update_payment(&mut rec).await? {
            return self
                .store
                .get_payment(merchant_id, out_trade_no)
                .await?
                .ok_or(PaymentError::NotFound);
        }
        self.metrics.outcome(&rec, "closed");
        Ok(rec)
    }

    /// Applies the bound channel's word to the record (compare-and-set).
    async fn apply_state(
        &self,
        mut rec: PaymentRecord,
        state: OrderState,
        channel: &Channel,
    ) -> Result<PaymentRecord, PaymentError> {
        if let Some(amount) = state.amount {
            if amount != rec.amount {
                let error = ChannelError::new(
                    ErrorKind::Protocol,
                    format!(
                        "channel reports amount {amount}, the order is for {}",
                        rec.amount
                    ),
                );
                tracing::error!(payment_id = %rec.payment_id, channel = %rec.channel, %error, "amount mismatch; payment left unchanged");
                return Err(PaymentError::Channel {
                    error,
                    payment: Box::new(rec),
                });
            }
        }
        let before = rec.status;
        let mut changed = false;
        if before.may_become(state.status) {
            rec.status = state.status;
            changed = true;
            if state.status == PaymentStatus::Succeeded {
                rec.paid_at = Some(
                    state
                        .paid_at
                        .map_or_else(now_ms, |t| t.unix_timestamp() * 1000),
                );
            }
        }
        if rec.provider_trade_no.is_none() && state.provider_trade_no.is_some() {
            rec.provider_trade_no = state.provider_trade_no;
            changed = true;
        }
        if rec.attempt_until.is_some() {
            rec.attempt_until = None;
            changed = true;
        }
        if !changed {
            return Ok(rec);
        }
        rec.updated_at = now_ms();
        if !self.store.update_payment(&mut rec).await? {
            // Someone else moved it first; theirs is at least as new.
            return self
                .store
                .get_payment(&rec.merchant_id, &rec.out_trade_no)
                .await?
                .ok_or(PaymentError::NotFound);
        }
        if rec.status != before {
            tracing::info!(payment_id = %rec.payment_id, channel = %rec.channel, from = before.as_str(), to = rec.status.as_str(), "payment state changed");
            if rec.status == PaymentStatus::Succeeded {
                self.metrics.outcome(&rec, "succeeded");
                self.metrics
                    .fees
                    .with_label_values(&[rec.channel.as_str()])
                    .inc_by(channel.settings.fee.fee(rec.amount));
            }
        }
        Ok(rec)
    }
}

/// Calls `op` until it succeeds, fails for good, or the channel's deadline runs out.
async fn with_retries<T, F, Fut>(channel: &Channel, op: F) -> Result<T, ChannelError>
where
    F: Fn(Duration) -> Fut,
    Fut: std::future::Future<Output = Result<T, ChannelError>>,
{
    let deadline = tokio::time::Instant::now() + channel.settings.timeout;
    let mut retries = 0;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let err = match op(remaining).await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if !err.retryable() || retries >= MAX_RETRIES || !channel.retry_allowed() {
            return Err(err);
        }
        retries += 1;
        let wait = backoff(retries, random_u64());
        if tokio::time::Instant::now() + wait + Duration::from_millis(10) >= deadline {
            return Err(err);
        }
        channel.metrics().retried(channel.name(), err.label());
        tokio::time::sleep(wait).await;
    }
}

/// What every idempotent replay (payment or refund) checks first: the same request, no
/// attempt in flight, and — for a failure the provider made final — the same error again.
fn check_replay(
    (stored_hash, hash): (&str, &str),
    attempt_until: Option<i64>,
    failed: bool,
    (code, message): (&Option<String>, &Option<String>),
) -> Result<(), PaymentError> {
    if stored_hash != hash {
        return Err(PaymentError::IdempotencyMismatch);
    }
    if attempt_until.is_some_and(|t| t > now_ms()) {
        return Err(PaymentError::InProgress);
    }
    if let (true, Some(code), Some(message)) = (failed, code, message) {
        return Err(PaymentError::Stored {
            code: code.clone(),
            message: message.clone(),
        });
    }
    Ok(())
}

/// A provider's refusal to close because the order is paid.
fn paid_refusal(e: &ChannelError) -> bool {
    matches!(&e.kind, ErrorKind::Rejected(code) if ["ORDERPAID", "ACQ.TRADE_STATUS_ERROR", "ACQ.TRADE_HAS_SUCCESS"].contains(&code.as_str()))
}

/// The unified API code a channel failure becomes (DESIGN.md §2).
pub fn api_code(e: &ChannelError) -> &'static str {
    match e.kind {
        ErrorKind::Rejected(_) => "channel_rejected",
        ErrorKind::NothingSent
        | ErrorKind::ChannelLimit
        | ErrorKind::CircuitOpen
        | ErrorKind::ProviderRetryable(_) => "channel_unavailable",
        ErrorKind::Timeout | ErrorKind::Transport | ErrorKind::ServerError => "channel_timeout",
        ErrorKind::NotFound | ErrorKind::BadSignature | ErrorKind::Protocol | ErrorKind::Local => {
            "channel_error"
        }
    }
}

fn attempt_window_ms(routes: &Routes<'_>, channel: &str) -> i64 {
    let timeout = routes
        .channels
        .get(channel)
        .map_or(Duration::from_secs(5), |c| c.settings.timeout);
    // The whole deadline plus slack for the store writes around it.
    timeout.as_millis() as i64 + 5_000
}

pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Minutes since midnight in China time (UTC+8, no daylight saving).
pub fn china_minute(unix_ms: i64) -> u16 {
    ((unix_ms / 1000 + 8 * 3600).rem_euclid(86_400) / 60) as u16
}

/// `pay_…` / `ref_…`: 96 random bits in hex.
fn new_id(prefix: &str) -> String {
    let mut b = [0u8; 12];
    aws_lc_rs::rand::fill(&mut b).expect("system randomness");
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{prefix}_{hex}")
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).expect("system randomness");
    u64::from_le_bytes(b)
}

fn sha256_hex(bytes: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn china_minute_is_utc_plus_8() {
        // 2023-11-14T22:13:20Z is 06:13 in China.
        assert_eq!(china_minute(1_700_000_000_000), 6 * 60 + 13);
        assert_eq!(china_minute(0), 8 * 60);
    }

    #[test]
    fn every_channel_failure_has_an_api_code() {
        let e = |k| ChannelError::new(k, "x");
        assert_eq!(api_code(&e(ErrorKind::Timeout)), "channel_timeout");
        assert_eq!(api_code(&e(ErrorKind::NothingSent)), "channel_unavailable");
        assert_eq!(
            api_code(&e(ErrorKind::Rejected("PARAM_ERROR".into()))),
            "channel_rejected"
        );
        assert_eq!(api_code(&e(ErrorKind::BadSignature)), "channel_error");
    }
}
