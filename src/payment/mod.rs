//! The payment lifecycle: route, bind, call the channel, store the outcome; query and close
//! the bound account later. This module is the state machine only: the guarded call path
//! (limit, breaker, retries, deadline) lives on [`Channel`].
//!
//! Cut by operation: `create` (route, bind, call, replay), `close`, `refund`, `late` (late
//! payments and their refund), `metrics`, `commit` (the one commit path of a state change:
//! compare-and-set with the shop event, the merge of a claim holder's lost write, the
//! outbox's wake-up); this file keeps what they share — the binding to an account, applying
//! a channel's word.
//!
//! # Safety of retries
//! - The binding (payment record with its channel **and account**) is written before any
//!   channel call. Every later call for the order goes to a live channel holding that account
//!   ([`PaymentService::bound`]); if none does (ops changed `mchid`, `sub_mchid`, `app_id`),
//!   the operation is refused, never sent to another account.
//! - Failover to a `fallback` channel happens only when no attempt of the call can have
//!   reached the channel ([`ChannelError::nothing_sent`], sticky over retries); the record is
//!   rebound, with a fresh claim for the fallback's window, before the fallback is called.
//! - A call that may have reached the channel is never failed over: the create asks the same
//!   channel (a query) what it has, and otherwise ends `unknown` with `504 channel_timeout`;
//!   the shop's retry with the same `out_trade_no` goes to the same account.
//! - A record has one in-flight call at a time (`attempt_until`, compare-and-set on
//!   `version`): creates and closes claim it; a concurrent twin gets `request_in_progress`,
//!   and a refresh never clears another request's live claim.
//! - A claim holder whose write loses the compare-and-set merges it only while the record
//!   still holds its claim; a holder that stalled past its window finds another request's
//!   claim (or none) and leaves the record — binding included — as that request left it.
//! - A payment belongs to the shop that created it: to any other shop it is not found, and
//!   its `out_trade_no` is taken.
//! - Only a verified answer moves a payment to a final state; a `succeeded` answer must state
//!   the order's amount and currency, and they must match.

mod close;
mod commit;
mod create;
pub mod export;
mod late;
mod metrics;
pub mod quota;
mod refund;
pub mod view;

pub use metrics::PaymentMetrics;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use prometheus::Registry;
use serde_json::json;
use time::OffsetDateTime;

use crate::channel::{
    Channel, ChannelError, ChannelSet, ErrorKind, OrderRequest, OrderState, SubMerchant,
};
use crate::clock::{china_minute, now_ms};
use crate::domain::{
    Account, ChannelFailure, EventStatus, EventType, LatePolicies, Method, PaymentStatus,
    RefundStatus,
};
use crate::ids::{new_id, sha256_hex};
use crate::routing::{NoRoute, PaymentFacts, Rules};
use crate::store::{EventRecord, PaymentRecord, RefundRecord, Store, StoreError};

use commit::{still_ours, Commits, Committed};

/// How long a payment stays payable when the shop does not say.
const DEFAULT_EXPIRY_MS: i64 = 2 * 3600 * 1000;
/// A new order must stay payable at least this long (a replay of an older one is not held
/// to it: it answers from the record).
const MIN_EXPIRY_MS: i64 = 60 * 1000;
/// Slack on a claim beyond its calls' deadlines, for the store writes around them.
const CLAIM_SLACK_MS: i64 = 5_000;
/// Reads of a record before giving up on claiming it against concurrent writers.
const CLAIM_TRIES: usize = 3;

pub use late::{late_refund_no, LateSettled, LATE_REFUND_PREFIX, LATE_REFUND_REASON};
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
    /// What to do with a late payment, per merchant (config `late_payments`).
    pub late_payments: &'a LatePolicies,
}

impl Routes<'_> {
    /// The account `rec` is bound to, in this config's terms. An Alipay ISV order bound by
    /// an earlier version names its seller by a fingerprint of the merchant's token (until
    /// the rebinding at start rewrites it — or if that failed, or an instance of that version
    /// still writes such orders): its seller is by construction its own merchant, whose
    /// `alipay_seller_id` stands in.
    pub fn bound_account(&self, rec: &PaymentRecord) -> Option<Account> {
        let mut account = rec.account.clone()?;
        if account.names_seller_by_token() {
            if let Some(seller) = self
                .merchants
                .get(&rec.merchant_id)
                .and_then(|m| m.alipay_seller_id.clone())
            {
                account.seller = Some(seller);
            }
        }
        Some(account)
    }

    /// A merchant's sub-merchant ids (config `merchants:`), empty when it has none.
    pub fn sub_merchant(&self, merchant_id: &str) -> SubMerchant {
        self.merchants.get(merchant_id).cloned().unwrap_or_default()
    }
}

/// Who asks about an existing order: a shop sees only the orders it created; payroute's own
/// workers (the reconciler) see every order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asker<'a> {
    Shop(&'a str),
    Payroute,
}

impl Asker<'_> {
    /// Whether a record created by `shop_id` is visible to this asker.
    fn owns(self, shop_id: &str) -> bool {
        match self {
            Asker::Shop(shop) => shop == shop_id,
            Asker::Payroute => true,
        }
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
    /// A request field that only the payment layer can judge (say, a new order's expiry).
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{error}")]
    Channel {
        error: ChannelError,
        payment: Box<PaymentRecord>,
    },
    /// A replay of a request whose final answer was an error.
    #[error("{message}")]
    Stored {
        code: ChannelFailure,
        message: String,
    },
    /// No live channel holds the account the order is bound to.
    #[error("{0}")]
    AccountUnavailable(String),
    /// Every channel the route offers was passed over (drained, over quota): nothing sent.
    #[error("{0}")]
    NoChannelNow(String),
    #[error("this out_trade_no was used with a different request")]
    IdempotencyMismatch,
    /// The merchant's `out_trade_no` belongs to an order another shop created.
    #[error("this out_trade_no is taken by another shop's order")]
    OutTradeNoTaken,
    /// The merchant's `out_refund_no` belongs to a refund another shop asked for.
    #[error("this out_refund_no is taken by another shop's refund")]
    OutRefundNoTaken,
    #[error("a request for this out_trade_no is in progress")]
    InProgress,
    #[error("payment not found")]
    NotFound,
    /// Our claim on the record ran out before our write, and another request claimed it:
    /// its binding and result stand, ours was dropped. The record as it is now.
    #[error("another request took this order over")]
    Superseded(Box<PaymentRecord>),
    /// The operation does not fit the payment's state (close a paid order, say).
    #[error("{message}")]
    InvalidState {
        message: String,
        payment: Box<PaymentRecord>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store failed after a call that may have created the order at the channel: the
    /// order may exist there, unrecorded. `payment` is the order as the shop must see it
    /// (`unknown`).
    #[error("the channel may have the order, but the store failed to record it: {error}")]
    Unrecorded {
        error: StoreError,
        payment: Box<PaymentRecord>,
    },
}

/// What one compare-and-set of a channel's word came to.
enum Applied {
    /// Written (or nothing to write): the record as it is now.
    Stored(PaymentRecord),
    /// Another writer moved the record first: the record as it left it.
    Lost(PaymentRecord),
}

/// Whether the caller holds the record's claim (`attempt_until`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Claim {
    Ours,
    NotOurs,
}

pub struct PaymentService {
    /// Reads, inserts, claims and reservations; every state change goes through `commits`.
    store: Arc<dyn Store>,
    commits: Commits,
    metrics: PaymentMetrics,
    /// What creates route by besides the config: health windows and drain switches.
    live: Arc<LiveState>,
}

/// Whether ops drained a channel (the manual switch); no I/O: the caller keeps it current.
pub trait Drained: Send + Sync {
    fn is_drained(&self, channel: &str) -> bool;
}

/// No channel drained (a service built without the switch, as in unit tests).
struct NoneDrained;

impl Drained for NoneDrained {
    fn is_drained(&self, _: &str) -> bool {
        false
    }
}

/// The live state a create routes by, as routing's [`Signals`](crate::routing::Signals).
struct LiveState {
    health: Option<Arc<crate::resilience::Health>>,
    drained: Arc<dyn Drained>,
}

impl crate::routing::Signals for LiveState {
    fn health(&self, channel: &str) -> crate::routing::Sample {
        self.health
            .as_ref()
            .map_or_else(Default::default, |h| h.sample(channel))
    }
    fn drained(&self, channel: &str) -> bool {
        self.drained.is_drained(channel)
    }
}

impl PaymentService {
    pub fn new(store: Arc<dyn Store>, registry: &Registry) -> prometheus::Result<PaymentService> {
        Ok(PaymentService {
            commits: Commits::new(store.clone()),
            store,
            metrics: PaymentMetrics::new(registry)?,
            live: Arc::new(LiveState {
                health: None,
                drained: Arc::new(NoneDrained),
            }),
        })
    }

    /// Routes creates by the channels' health windows.
    pub fn with_health(mut self, health: Arc<crate::resilience::Health>) -> PaymentService {
        self.live = Arc::new(LiveState {
            health: Some(health),
            drained: self.live.drained.clone(),
        });
        self
    }

    /// Routes creates around drained channels.
    pub fn with_drains(mut self, drained: Arc<dyn Drained>) -> PaymentService {
        self.live = Arc::new(LiveState {
            health: self.live.health.clone(),
            drained,
        });
        self
    }

    /// What creates route by now, for explain.
    pub fn signals(&self) -> Arc<dyn crate::routing::Signals + Send + Sync> {
        self.live.clone()
    }

    /// Counts a create or a payment at its channel for the channel's conversion.
    fn converted(&self, channel: &str, paid: bool) {
        if let Some(h) = &self.live.health {
            let h = h.channel(channel);
            if paid {
                h.paid(now_ms())
            } else {
                h.created(now_ms())
            }
        }
    }

    /// Starts the payment metrics of `config`'s channels at 0 (see `PaymentMetrics`).
    pub fn start_metrics_at_zero(&self, config: &crate::config::Config) {
        self.metrics.start_at_zero(config);
        self.late_labels(config);
    }

    /// Notified whenever a shop event has been committed.
    pub fn events_written(&self) -> Arc<tokio::sync::Notify> {
        self.commits.events_written()
    }

    /// Applies a verified notification's order state (compare-and-set, never clearing a live
    /// claim), with the shop event if the payment reached a final state (and a late
    /// payment's refund, by policy).
    pub async fn apply_notified(
        &self,
        routes: &Routes<'_>,
        rec: PaymentRecord,
        state: OrderState,
        channel: &Channel,
    ) -> Result<PaymentRecord, PaymentError> {
        self.apply_state(routes, rec, state, channel, Claim::NotOurs)
            .await
    }

    /// Every merchant's payment numbered `out_trade_no`, oldest first: what a provider's
    /// notification, which names the order but not our merchant, may be about. The caller
    /// picks by the account the provider signed (the number is unique per merchant only).
    pub async fn payments_numbered(
        &self,
        out_trade_no: &str,
    ) -> Result<Vec<PaymentRecord>, StoreError> {
        self.store.payments_by_trade_no(out_trade_no).await
    }

    /// The refund `out_refund_no` of `payment` (none if that number is another payment's).
    pub async fn refund_of(
        &self,
        payment: &PaymentRecord,
        out_refund_no: &str,
    ) -> Result<Option<RefundRecord>, StoreError> {
        Ok(self
            .store
            .get_refund(&payment.merchant_id, out_refund_no)
            .await?
            .filter(|r| r.payment_id == payment.payment_id))
    }

    /// The live channel holding the account `rec` is bound to, and the merchant's ids for
    /// it: the bound channel if it still holds that account, else any channel that does.
    /// Refused (and counted) when none does.
    fn bound<'r>(
        &self,
        routes: &'r Routes<'_>,
        rec: &PaymentRecord,
        operation: &str,
    ) -> Result<(&'r Arc<Channel>, SubMerchant), PaymentError> {
        let sub = routes.sub_merchant(&rec.merchant_id);
        let named = routes.channels.get(&rec.channel);
        let Some(bound) = &routes.bound_account(rec) else {
            // Written before accounts were stored: the channel name is all there is.
            return named.map(|ch| (ch, sub)).ok_or_else(|| {
                self.refuse(
                    rec,
                    operation,
                    format!("bound channel {:?} is no longer configured", rec.channel),
                )
            });
        };
        if let Some(ch) = named.filter(|ch| ch.account(&sub) == *bound) {
            return Ok((ch, sub));
        }
        if let Some(ch) = routes.channels.holding(bound, &sub) {
            return Ok((ch, sub));
        }
        let why = match named {
            Some(ch) => format!(
                "the order is bound to {} at channel {:?}, whose account changed ({}); no configured channel holds the bound account, so nothing was sent",
                rec.channel,
                rec.channel,
                bound.differences(&ch.account(&sub))
            ),
            None => format!(
                "bound channel {:?} is no longer configured and no other channel holds its account; nothing was sent",
                rec.channel
            ),
        };
        Err(self.refuse(rec, operation, why))
    }

    fn refuse(&self, rec: &PaymentRecord, operation: &str, why: String) -> PaymentError {
        self.metrics
            .refused
            .with_label_values(&[rec.channel.as_str(), operation])
            .inc();
        tracing::error!(payment_id = %rec.payment_id, channel = %rec.channel, operation, %why, "operation refused: bound account unavailable");
        PaymentError::AccountUnavailable(why)
    }

    /// Stores a failed attempt and turns it into the error the shop sees.
    async fn fail(
        &self,
        mut rec: PaymentRecord,
        error: ChannelError,
        status: PaymentStatus,
    ) -> PaymentError {
        // Attempts run only for orders the channel has not answered yet (pending or unknown,
        // no action), so the failure alone decides what the order is now.
        let failure = failure_of(&error);
        let before = rec.status;
        let claim = rec.attempt_until;
        rec.status = status;
        rec.error_code = Some(failure);
        rec.error_message = Some(error.to_string());
        rec.attempt_until = None;
        self.metrics.outcome(&rec, outcome_label(failure));
        tracing::warn!(payment_id = %rec.payment_id, channel = %rec.channel, error = %error, "channel call failed");
        if let Err(e) = self.commits.commit_claimed(&mut rec, before, claim).await {
            // Nothing sent, or a final refusal: nothing exists at the channel, and the
            // store's own error says it all. Otherwise the order may exist there.
            return match status {
                PaymentStatus::Unknown => unrecorded(rec, e),
                _ => e,
            };
        }
        PaymentError::Channel {
            error,
            payment: Box::new(rec),
        }
    }

    /// The claim holder's write of `rec` (see [`Commits::commit_claimed`]), with the shop
    /// event if its status moved to a final one. `claim` is the record's `attempt_until` as
    /// the caller claimed it.
    async fn save(&self, rec: &mut PaymentRecord, claim: Option<i64>) -> Result<(), PaymentError> {
        let before = rec.status;
        self.commits.commit_claimed(rec, before, claim).await?;
        Ok(())
    }

    /// Gives up our claim without other changes (the record stays as it was).
    async fn release(&self, mut rec: PaymentRecord) -> PaymentRecord {
        let claim = rec.attempt_until;
        rec.attempt_until = None;
        rec.updated_at = now_ms();
        if let Err(e) = self.save(&mut rec, claim).await {
            tracing::warn!(payment_id = %rec.payment_id, error = %e, "releasing the claim failed; it expires by itself");
        }
        rec
    }

    /// The stored payment; with `refresh`, its bound account is asked first. A payment with
    /// a call in flight answers from the record: that call's result will be stored. Another
    /// shop's order is not found (and not refreshed).
    pub async fn get(
        &self,
        routes: &Routes<'_>,
        asker: Asker<'_>,
        merchant_id: &str,
        out_trade_no: &str,
        refresh: bool,
    ) -> Result<PaymentRecord, PaymentError> {
        let rec = self
            .store
            .get_payment(merchant_id, out_trade_no)
            .await?
            .filter(|rec| asker.owns(&rec.shop_id))
            .ok_or(PaymentError::NotFound)?;
        if !refresh || claim_live(rec.attempt_until) {
            return Ok(rec);
        }
        // Boxed: a plain read's future stays small (see `api::route`).
        Box::pin(self.refresh(routes, rec, out_trade_no)).await
    }

    /// Asks the bound account for the state of `rec`, and applies it.
    async fn refresh(
        &self,
        routes: &Routes<'_>,
        rec: PaymentRecord,
        out_trade_no: &str,
    ) -> Result<PaymentRecord, PaymentError> {
        let (channel, sub) = self.bound(routes, &rec, "query")?;
        match channel.query(out_trade_no, &sub).await {
            Ok(state) => {
                self.apply_state(routes, rec, state, channel, Claim::NotOurs)
                    .await
            }
            // The channel has no such order (nothing was ever created there).
            Err(e) if e.kind == ErrorKind::NotFound => Ok(rec),
            Err(error) => Err(PaymentError::Channel {
                error,
                payment: Box::new(rec),
            }),
        }
    }

    /// Applies the bound account's verified word to the record (compare-and-set). An answer
    /// whose amount or currency differ from the order's — or that says "paid" without
    /// stating them — changes nothing. A payment of an order that had ended is late
    /// (`late.rs`): told as `payment.late`, and refunded by policy.
    ///
    /// A lost compare-and-set answers the record as the winner left it. The winner — a
    /// notification or a refresh — never clears a live claim it does not hold, so when the
    /// caller holds the claim ([`Claim::Ours`]) and the record still carries it, the word is
    /// applied again to that record, which ends the claim: left there, it would answer every
    /// replay of the create `409 request_in_progress` until it ran out (2 × timeout + 5 s).
    async fn apply_state(
        &self,
        routes: &Routes<'_>,
        rec: PaymentRecord,
        state: OrderState,
        channel: &Channel,
        claim: Claim,
    ) -> Result<PaymentRecord, PaymentError> {
        let held = rec.attempt_until;
        let mut rec = rec;
        let mut lost = 0;
        loop {
            match self.apply_once(routes, rec, &state, channel, claim).await? {
                Applied::Stored(rec) => return Ok(rec),
                Applied::Lost(fresh) => {
                    lost += 1;
                    let ours_still = claim == Claim::Ours && still_ours(held, fresh.attempt_until);
                    if !ours_still || lost >= CLAIM_TRIES {
                        return Ok(fresh);
                    }
                    rec = fresh;
                }
            }
        }
    }

    /// One compare-and-set of [`PaymentService::apply_state`].
    async fn apply_once(
        &self,
        routes: &Routes<'_>,
        mut rec: PaymentRecord,
        state: &OrderState,
        channel: &Channel,
        claim: Claim,
    ) -> Result<Applied, PaymentError> {
        if let Err(mismatch) = cross_check(&rec, state) {
            let error = ChannelError::new(ErrorKind::Protocol, mismatch.to_string());
            tracing::error!(payment_id = %rec.payment_id, channel = %rec.channel, %error, "answer fails the cross-check; payment left unchanged");
            let rec = match claim {
                Claim::Ours => self.release(rec).await,
                Claim::NotOurs => rec,
            };
            return Err(PaymentError::Channel {
                error,
                payment: Box::new(rec),
            });
        }
        let before = rec.status;
        let mut changed = false;
        let late = before.paid_late(state.status);
        if before.may_become(state.status) {
            rec.status = state.status;
            rec.late |= late;
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
            rec.provider_trade_no = state.provider_trade_no.clone();
            changed = true;
        }
        // Our own claim ends here; another request's live claim is never cleared, a dead one
        // (its holder crashed) may be.
        if rec.attempt_until.is_some() && (claim == Claim::Ours || !claim_live(rec.attempt_until)) {
            rec.attempt_until = None;
            changed = true;
        }
        if !changed {
            return Ok(Applied::Stored(rec));
        }
        rec.updated_at = now_ms();
        let late_action = late.then(|| routes.late_payments.for_merchant(&rec.merchant_id));
        let mut refund_scheduled = false;
        let event = match late_action {
            Some(action) => {
                refund_scheduled = self.late_backstop(&rec, action).await;
                Some(self.late_event(&rec, action))
            }
            None => payment_event(&rec, before),
        };
        if let Committed::Lost(fresh) = self.commits.commit(&mut rec, event).await? {
            // Someone else moved it first; theirs is at least as new.
            return Ok(Applied::Lost(fresh));
        }
        if rec.status != before {
            tracing::info!(payment_id = %rec.payment_id, channel = %rec.channel, from = before.as_str(), to = rec.status.as_str(), "payment state changed");
            if rec.status == PaymentStatus::Succeeded {
                self.metrics.outcome(&rec, "succeeded");
                self.converted(&rec.channel, true);
                self.metrics
                    .fees
                    .with_label_values(&[rec.channel.as_str()])
                    .inc_by(channel.settings.fee.fee(rec.amount));
            }
        }
        if let Some(action) = late_action {
            self.late_committed(routes, &rec, action, refund_scheduled)
                .await;
        }
        Ok(Applied::Stored(rec))
    }
}

/// `e` as the shop must hear it after a call that may have created the order: a store error
/// says that the order may exist at the channel (status `unknown`, retry with the same
/// `out_trade_no`), not the "nothing was sent" of a write refused before any call.
fn unrecorded(mut rec: PaymentRecord, e: PaymentError) -> PaymentError {
    let PaymentError::Store(error) = e else {
        return e;
    };
    tracing::error!(payment_id = %rec.payment_id, channel = %rec.channel, %error, "the store failed after the channel call; the order may exist at the channel, unrecorded");
    rec.status = PaymentStatus::Unknown;
    // Not stored, so not shown: the shop's retry gets it again from the channel, for the
    // same order.
    rec.action = None;
    PaymentError::Unrecorded {
        error,
        payment: Box::new(rec),
    }
}

/// The shop event of a refund that moved from `before` to a reportable status.
fn refund_event(rec: &RefundRecord, before: RefundStatus) -> Option<EventRecord> {
    let kind = EventType::for_refund(rec.status).filter(|_| rec.status != before)?;
    Some(new_event(
        kind,
        &rec.shop_id,
        &rec.merchant_id,
        &rec.payment_id,
        view::refund_json(rec),
    ))
}

/// The shop event of a payment that moved from `before` to a final status.
fn payment_event(rec: &PaymentRecord, before: PaymentStatus) -> Option<EventRecord> {
    let kind = EventType::for_payment(rec.status).filter(|_| rec.status != before)?;
    Some(new_event(
        kind,
        &rec.shop_id,
        &rec.merchant_id,
        &rec.payment_id,
        view::payment_json(rec),
    ))
}

/// A pending shop event, due now: `{"id","type","created_at","data"}` (ARCHITECTURE.md, "Shop
/// events and webhooks"), and `request_id`: the id of the API request or provider notification that
/// caused it (`null` for the reconciliation worker's), which its delivery also carries as
/// `X-Request-Id`.
fn new_event(
    kind: EventType,
    shop_id: &str,
    merchant_id: &str,
    payment_id: &str,
    data: serde_json::Value,
) -> EventRecord {
    let now = now_ms();
    let event_id = new_id("evt");
    let body = json!({
        "id": event_id,
        "type": kind.as_str(),
        "created_at": view::rfc3339(now),
        "request_id": crate::context::request_id(),
        "data": data,
    });
    EventRecord {
        event_id,
        shop_id: shop_id.to_string(),
        merchant_id: merchant_id.to_string(),
        payment_id: payment_id.to_string(),
        event_type: kind,
        body: body.to_string(),
        status: EventStatus::Pending,
        attempts: 0,
        next_attempt_at: now,
        created_at: now,
        delivered_at: None,
        last_error: None,
        seq: 0,
        claim: None,
    }
}

/// How a channel's answer fails to be about the order: it changes nothing, and is told as a
/// protocol error (a notification's is acknowledged as `mismatch`: resending it would not
/// change it).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum Mismatch {
    #[error("channel reports amount {reported}, the order is for {order}")]
    Amount { reported: u64, order: u64 },
    #[error("a paid answer without the order's amount")]
    NoAmount,
    #[error("channel reports currency {reported}, the order is in {order}")]
    Currency { reported: String, order: String },
    #[error("a paid answer without the order's currency")]
    NoCurrency,
}

/// The channel's answer is about this order: the same amount and currency. A "paid" answer
/// must state both; other states are checked where they state them.
fn cross_check(rec: &PaymentRecord, state: &OrderState) -> Result<(), Mismatch> {
    let must = state.status == PaymentStatus::Succeeded;
    match state.amount {
        Some(reported) if reported != rec.amount => {
            return Err(Mismatch::Amount {
                reported,
                order: rec.amount,
            })
        }
        None if must => return Err(Mismatch::NoAmount),
        _ => {}
    }
    match state.currency.as_deref() {
        Some(c) if c != rec.currency => Err(Mismatch::Currency {
            reported: c.to_string(),
            order: rec.currency.clone(),
        }),
        None if must => Err(Mismatch::NoCurrency),
        _ => Ok(()),
    }
}

fn claim_live(attempt_until: Option<i64>) -> bool {
    attempt_until.is_some_and(|t| t > now_ms())
}

/// What every idempotent replay (payment or refund) checks first: the same request, no
/// attempt in flight, and — for a failure the provider made final — the same error again.
fn check_replay(
    same_request: bool,
    attempt_until: Option<i64>,
    failed: bool,
    (code, message): (&Option<ChannelFailure>, &Option<String>),
) -> Result<(), PaymentError> {
    if !same_request {
        return Err(PaymentError::IdempotencyMismatch);
    }
    if claim_live(attempt_until) {
        return Err(PaymentError::InProgress);
    }
    if let (true, Some(code), Some(message)) = (failed, code, message) {
        return Err(PaymentError::Stored {
            code: *code,
            message: message.clone(),
        });
    }
    Ok(())
}

/// The stored and shown failure of a channel call (ARCHITECTURE.md, "The unified API and its
/// errors", "What is safe to retry").
pub fn failure_of(e: &ChannelError) -> ChannelFailure {
    match e.kind {
        ErrorKind::Rejected(_)
        | ErrorKind::AccountRefused(_)
        | ErrorKind::AlreadyPaid
        | ErrorKind::NotCloseable => ChannelFailure::Rejected,
        ErrorKind::Local => ChannelFailure::Error,
        _ if e.nothing_sent() => ChannelFailure::Unavailable,
        ErrorKind::ProviderRetryable(_) => ChannelFailure::Unavailable,
        ErrorKind::NotFound | ErrorKind::BadSignature | ErrorKind::Protocol => {
            ChannelFailure::Error
        }
        // Timeouts, resets, 5xx — and a limit or open breaker after any of them.
        _ => ChannelFailure::Timeout,
    }
}

fn outcome_label(f: ChannelFailure) -> &'static str {
    match f {
        ChannelFailure::Rejected => "rejected",
        ChannelFailure::Unavailable => "unavailable",
        ChannelFailure::Error => "error",
        ChannelFailure::Timeout => "timeout",
    }
}

/// How long a claim on a record lasts: the call and its follow-up query, each within the
/// channel's deadline, plus slack for the store writes around them.
fn claim_window_ms(channel: &Channel) -> i64 {
    2 * channel.settings.timeout.as_millis() as i64 + CLAIM_SLACK_MS
}

/// The idempotency hash of `request` as `shop_id` made it: one shop's request never matches
/// another's, however alike their bodies.
fn request_hash(shop_id: &str, request: &serde_json::Value) -> String {
    sha256_hex(json!([shop_id, request]).to_string().as_bytes())
}

/// Whether a replay is the stored request: its hash, or — for a record stored before the shop
/// was part of the hash, whose shop the caller has already checked — the hash of the request
/// alone, so that an order in flight across the upgrade can still be retried.
fn same_request(stored: &str, hash: &str, request: &serde_json::Value) -> bool {
    stored == hash || stored == sha256_hex(request.to_string().as_bytes())
}

#[cfg(test)]
mod tests;
