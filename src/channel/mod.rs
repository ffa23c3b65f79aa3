//! Channels: one provider account plus how to call it.
//!
//! A [`Channel`] wraps a [`Connector`] (the provider protocol: `wechatpay_v3`, `alipay`) with
//! what every channel shares: its name, family, fee rate, timeout, metrics and its one guarded
//! call path — limit → breaker → retries with budget and deadline → sign/send/verify. Connectors
//! build and sign requests, verify answers and turn provider codes into typed [`ErrorKind`]s;
//! no provider code string leaves this module.
//!
//! # Safety of retries
//! Every call returns, with its error, whether *any* of its attempts may have reached the
//! provider ([`ChannelError::maybe_sent`]). The flag is sticky over the whole call: a 5xx
//! followed by an open breaker is still "may have been sent", so the payment layer never
//! fails such an order over to another account.

pub mod alipay;
mod error;
pub mod http;
pub mod keys;
pub mod notification;
pub mod wechatpay;

pub use notification::{Notification, NotifiedAccount, NotifyAnswer, NotifyError};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

pub use error::{ChannelError, ErrorKind};

use async_trait::async_trait;
use bytes::Bytes;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use time::OffsetDateTime;

use crate::domain::{Account, Family, FeeRate, Method, PaymentStatus, RefundStatus};
use crate::resilience::breaker::Outcome;
use crate::resilience::{backoff, ChannelGuard, RateSpec, Refused, Resilience};
use crate::secret::Secret;

/// Retries after the first attempt, within the call's deadline (ARCHITECTURE.md, "What is safe to
/// retry").
const MAX_RETRIES: u32 = 2;
/// A retry is not started when less than this is left of the deadline.
const MIN_ATTEMPT_TIME: Duration = Duration::from_millis(10);

/// A channel as config describes it, validated and with its keys parsed.
#[derive(Debug)]
pub struct ChannelSettings {
    pub name: String,
    pub fee: FeeRate,
    /// One deadline per call, every retry included.
    pub timeout: Duration,
    /// No trailing slash.
    pub base_url: String,
    /// Extra trusted roots (PEM) besides the webpki roots, e.g. a sandbox's test CA.
    pub ca_pem: Option<String>,
    pub limit: Option<RateSpec>,
    /// A direct-mode channel is a merchant's own account: only these merchants' payments may
    /// be sent to it. `None` for partner / ISV channels, which serve every merchant.
    pub owners: Option<BTreeSet<String>>,
    /// `quota:`: how much this channel's accounts may take (DESIGN.md §13, "bank limits").
    pub quota: Option<Quota>,
    pub connector: ConnectorSettings,
}

/// A channel's `quota:` ("bank limits", 单日限额), in fen, each limit optional and at least one
/// set: counted per bound account (a partner / ISV channel's per sub-merchant) over the China
/// calendar day and month, of the payments bound there that are or may become paid.
/// Validated: every limit positive, `single ≤ daily ≤ monthly` where both are set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    /// At most this much a China calendar day, per account.
    pub daily: Option<u64>,
    /// At most this much a China calendar month, per account.
    pub monthly: Option<u64>,
    /// No one payment above this.
    pub single: Option<u64>,
}

#[derive(Debug)]
pub enum ConnectorSettings {
    WechatPay(Arc<wechatpay::WechatPaySettings>),
    Alipay(Arc<alipay::AlipaySettings>),
}

impl ChannelSettings {
    pub fn family(&self) -> Family {
        match self.connector {
            ConnectorSettings::WechatPay(_) => Family::Wechat,
            ConnectorSettings::Alipay(_) => Family::Alipay,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self.connector {
            ConnectorSettings::WechatPay(_) => "wechatpay_v3",
            ConnectorSettings::Alipay(_) => "alipay",
        }
    }

    /// Partner / ISV channels collect for sub-merchants and need their ids.
    pub fn needs_sub_merchant(&self) -> bool {
        match &self.connector {
            ConnectorSettings::WechatPay(w) => {
                matches!(w.mode, wechatpay::WechatMode::Partner { .. })
            }
            ConnectorSettings::Alipay(a) => a.mode == alipay::AlipayMode::Isv,
        }
    }

    /// Whether a payment of `merchant` may be sent to this channel's account.
    pub fn serves(&self, merchant: &str) -> bool {
        self.owners.as_ref().is_none_or(|o| o.contains(merchant))
    }

    pub fn mode(&self) -> &'static str {
        match &self.connector {
            ConnectorSettings::WechatPay(w) => match w.mode {
                wechatpay::WechatMode::Direct { .. } => "direct",
                wechatpay::WechatMode::Partner { .. } => "partner",
            },
            ConnectorSettings::Alipay(a) => match a.mode {
                alipay::AlipayMode::Direct => "direct",
                alipay::AlipayMode::Isv => "isv",
            },
        }
    }
}

impl ChannelSettings {
    /// The provider account an order created through this channel for `sub` belongs to.
    pub fn account(&self, sub: &SubMerchant) -> Account {
        match &self.connector {
            ConnectorSettings::WechatPay(w) => match &w.mode {
                wechatpay::WechatMode::Direct { mchid, appid } => Account {
                    provider: "wechatpay_v3".into(),
                    mode: "direct".into(),
                    mchid: Some(mchid.clone()),
                    sub_mchid: None,
                    app_id: Some(appid.clone()),
                    seller: None,
                },
                wechatpay::WechatMode::Partner { sp_mchid, sp_appid } => Account {
                    provider: "wechatpay_v3".into(),
                    mode: "partner".into(),
                    mchid: Some(sp_mchid.clone()),
                    sub_mchid: sub.wechat_sub_mchid.clone(),
                    app_id: Some(sp_appid.clone()),
                    seller: None,
                },
            },
            ConnectorSettings::Alipay(a) => Account {
                provider: "alipay".into(),
                mode: self.mode().into(),
                mchid: None,
                sub_mchid: None,
                app_id: Some(a.app_id.clone()),
                // The seller of an ISV order is the merchant's Alipay user id, which a token
                // refresh keeps (binding on the token would strand every open order at each
                // refresh) and which Alipay signs into every notification as `seller_id`.
                seller: match a.mode {
                    alipay::AlipayMode::Isv => sub.alipay_seller_id.clone(),
                    alipay::AlipayMode::Direct => None,
                },
            },
        }
    }
}

/// The per-merchant ids a partner / ISV channel acts under (config `merchants:`).
#[derive(Clone, Debug, Default)]
pub struct SubMerchant {
    pub wechat_sub_mchid: Option<String>,
    pub wechat_sub_appid: Option<String>,
    pub alipay_app_auth_token: Option<Secret>,
    /// The merchant's Alipay user id (`2088…`), which a token refresh keeps: the identity
    /// an ISV order is bound to.
    pub alipay_seller_id: Option<String>,
}

/// What the channel is asked to create.
#[derive(Clone, Debug)]
pub struct OrderRequest<'a> {
    pub out_trade_no: &'a str,
    pub amount: u64,
    pub currency: &'a str,
    pub method: Method,
    pub description: &'a str,
    pub expires_at: OffsetDateTime,
    pub notify_url: &'a str,
    pub openid: Option<&'a str>,
    pub client_ip: Option<&'a str>,
    pub attach: Option<&'a str>,
    pub return_url: Option<&'a str>,
    pub sub: &'a SubMerchant,
    /// Sent to an eliminated channel as its probe (or as the last resort): a run of these
    /// succeeding readmits the channel.
    pub probe: bool,
}

/// A created order: what the payer must do next.
#[derive(Clone, Debug, PartialEq)]
pub struct Created {
    /// The unified API's `action` object (`qr_code`, `jsapi`, `redirect`, `form`, `app`).
    pub action: serde_json::Value,
    pub provider_trade_no: Option<String>,
}

/// An order as the provider reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderState {
    pub status: PaymentStatus,
    /// The provider's own word (`NOTPAY`, `SUCCESS`, …), for logs and explain.
    pub provider_state: String,
    pub provider_trade_no: Option<String>,
    /// The order's amount and currency as the provider states them; the payment layer
    /// refuses an answer without them (it cannot be cross-checked).
    pub amount: Option<u64>,
    pub currency: Option<String>,
    pub paid_at: Option<OffsetDateTime>,
}

/// What the channel is asked to refund.
#[derive(Clone, Debug)]
pub struct RefundRequest<'a> {
    pub out_trade_no: &'a str,
    /// The provider's number of the paid trade, when known: a provider that takes it
    /// refunds that trade only, not whichever the merchant credentials reach under
    /// `out_trade_no` (an Alipay ISV token pasted under the wrong merchant).
    pub provider_trade_no: Option<&'a str>,
    pub out_refund_no: &'a str,
    pub amount: u64,
    /// The paid amount of the order (WeChat Pay wants it with every refund).
    pub total: u64,
    pub currency: &'a str,
    pub reason: Option<&'a str>,
    pub notify_url: &'a str,
    pub sub: &'a SubMerchant,
}

/// A refund as the provider reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct RefundState {
    pub status: RefundStatus,
    pub provider_state: String,
    pub provider_refund_no: Option<String>,
    /// This refund's amount as the provider states it, when it does.
    pub amount: Option<u64>,
    /// Everything refunded on the order so far (Alipay's `refund_fee`), when stated.
    pub refunded_total: Option<u64>,
}

/// A provider's trade statement file of one China calendar day, as downloaded: checked and
/// parsed by `statements`, which knows the formats; the connector only fetches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatementFile {
    /// WeChat Pay's trade bill: CSV (gzipped when `gzip`), and the SHA-1 (hex) the bill
    /// answer stated for the bytes as downloaded — the download itself is not signed.
    Wechat {
        bytes: Bytes,
        gzip: bool,
        sha1_hex: String,
    },
    /// Alipay's trade statement: a zip of GBK CSVs.
    Alipay { bytes: Bytes },
}

/// `YYYY-MM-DD`, as both providers name a statement's day.
pub(crate) fn statement_day(date: time::Date) -> Result<String, ChannelError> {
    date.format(time::macros::format_description!("[year]-[month]-[day]"))
        .map_err(|e| ChannelError::new(ErrorKind::Local, format!("statement date: {e}")))
}

/// A provider protocol. Implementations sign, send, verify and map one attempt; they never
/// retry ([`Channel`] owns the guarded call path).
#[async_trait]
pub trait Connector: Send + Sync {
    async fn create(
        &self,
        order: &OrderRequest<'_>,
        deadline: Duration,
    ) -> Result<Created, ChannelError>;
    async fn query(
        &self,
        out_trade_no: &str,
        sub: &SubMerchant,
        deadline: Duration,
    ) -> Result<OrderState, ChannelError>;
    /// Closes an unpaid order. A paid order is refused (`AlreadyPaid` or `NotCloseable`).
    async fn close(
        &self,
        out_trade_no: &str,
        sub: &SubMerchant,
        deadline: Duration,
    ) -> Result<(), ChannelError>;
    /// Refunds (part of) a paid order. The provider deduplicates on `out_refund_no`.
    async fn refund(
        &self,
        refund: &RefundRequest<'_>,
        deadline: Duration,
    ) -> Result<RefundState, ChannelError>;
    async fn refund_query(
        &self,
        out_trade_no: &str,
        out_refund_no: &str,
        sub: &SubMerchant,
        deadline: Duration,
    ) -> Result<RefundState, ChannelError>;
    /// The account's trade statement of `date` (China calendar day): for a partner / ISV
    /// channel, of the sub-merchant `sub` names. A day the provider has no file for yet is
    /// `NotFound`.
    async fn trade_statement(
        &self,
        date: time::Date,
        sub: &SubMerchant,
        deadline: Duration,
    ) -> Result<StatementFile, ChannelError>;
    /// Verifies and parses a notification the provider POSTed to this channel's notify_url
    /// (no network: signature, freshness, decryption, mapping). `now_unix`: seconds.
    fn verify_notification(
        &self,
        headers: &::http::HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<Notification, NotifyError>;
    /// Whether a notification could be this channel's, by what it says of itself before any
    /// signature is checked (Alipay: its `app_id`). Only narrows which channels try to
    /// verify a notification posted to a name they do not have: each check costs a
    /// signature verification, which an unauthenticated POST should not multiply.
    fn may_be_for_this_account(&self, _headers: &::http::HeaderMap, _body: &[u8]) -> bool {
        // WeChat Pay names its key (`Wechatpay-Serial`), which the verifier looks up before
        // any signature check: a channel without it is cheap to try.
        true
    }
    /// The answer the provider expects to a notification: only
    /// [`NotifyAnswer::Acknowledged`] stops its retries.
    fn notification_answer(
        &self,
        answer: NotifyAnswer,
        message: &str,
    ) -> ::http::Response<http_body_util::Full<bytes::Bytes>>;
    /// A created order's payer action as it may be stored and shown to anyone but the
    /// payer: without what only the payer may carry (an Alipay ISV merchant's
    /// `app_auth_token`, and the signature that covers it).
    fn storable_action(&self, action: &serde_json::Value) -> serde_json::Value {
        action.clone()
    }
    /// The payer's action again, from a stored one ([`Connector::storable_action`]) and the
    /// merchant's live ids: what a replayed create answers.
    fn payer_action(
        &self,
        stored: &serde_json::Value,
        _sub: &SubMerchant,
    ) -> Result<serde_json::Value, ChannelError> {
        Ok(stored.clone())
    }
}

/// What every order answer must hold: the order asked about, and its state in `field`.
fn order_answer<'a>(
    v: &'a serde_json::Value,
    out_trade_no: &str,
    field: &str,
) -> Result<&'a str, ChannelError> {
    if v["out_trade_no"].as_str() != Some(out_trade_no) {
        return Err(ChannelError::new(
            ErrorKind::Protocol,
            format!(
                "answer is for out_trade_no {}, asked for {out_trade_no:?}",
                v["out_trade_no"]
            ),
        ));
    }
    v[field]
        .as_str()
        .ok_or_else(|| ChannelError::new(ErrorKind::Protocol, format!("answer has no {field}")))
}

/// `payroute_channel_requests_total{result}` of a call that succeeded.
const CALL_OK: &str = "ok";
/// Every operation a channel is called for (`payroute_channel_requests_total{operation}`).
const OPERATIONS: [&str; 6] = [
    "create",
    "query",
    "close",
    "refund",
    "refund_query",
    "statement",
];

/// Channel request metrics, shared by every channel across reloads.
pub struct ChannelMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    retries: IntCounterVec,
}

impl ChannelMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<ChannelMetrics> {
        let requests = IntCounterVec::new(
            Opts::new(
                "payroute_channel_requests_total",
                "Calls to payment channels by operation and result.",
            ),
            &["channel", "operation", "result"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "payroute_channel_request_duration_seconds",
                "Latency of calls to payment channels, retries included.",
            )
            .buckets(crate::LATENCY_BUCKETS.to_vec()),
            &["channel", "operation"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "payroute_retries_total",
                "Retries of channel calls by reason.",
            ),
            &["channel", "reason"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        Ok(ChannelMetrics {
            requests,
            duration,
            retries,
        })
    }

    /// `channel`'s call counters start at 0 for every operation and result, so that an
    /// error-ratio alert sees the first failure rather than a series born with it. Run as
    /// each channel is built: at start and on every reload. (Latency histograms and retry
    /// reasons appear with their first call.)
    pub fn start_at_zero(&self, channel: &str) {
        for op in OPERATIONS {
            for result in std::iter::once(CALL_OK).chain(ChannelError::LABELS) {
                self.requests.with_label_values(&[channel, op, result]);
            }
        }
    }

    pub fn retried(&self, channel: &str, reason: &str) {
        self.retries.with_label_values(&[channel, reason]).inc();
    }
}

/// A live channel: settings plus connector plus metrics.
pub struct Channel {
    pub settings: Arc<ChannelSettings>,
    connector: Box<dyn Connector>,
    metrics: Arc<ChannelMetrics>,
    guard: ChannelGuard,
}

impl Channel {
    pub fn build(
        settings: Arc<ChannelSettings>,
        metrics: Arc<ChannelMetrics>,
        resilience: &Arc<Resilience>,
    ) -> Result<Channel, http::ClientError> {
        let http = http::HttpClient::new(settings.ca_pem.as_deref())?;
        let base_url = settings.base_url.clone();
        let connector: Box<dyn Connector> = match &settings.connector {
            ConnectorSettings::WechatPay(w) => {
                Box::new(wechatpay::WechatPay::new(base_url, w.clone(), http))
            }
            ConnectorSettings::Alipay(a) => {
                Box::new(alipay::Alipay::new(base_url, a.clone(), http))
            }
        };
        metrics.start_at_zero(&settings.name);
        Ok(Channel {
            guard: resilience.channel(&settings.name, settings.limit),
            settings,
            connector,
            metrics,
        })
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    pub fn family(&self) -> Family {
        self.settings.family()
    }

    pub fn metrics(&self) -> &ChannelMetrics {
        &self.metrics
    }

    /// `closed`, `open` or `half_open`.
    pub fn breaker_state(&self) -> &'static str {
        self.guard.breaker_state()
    }

    /// How long until the open breaker admits a probe; `None` unless it is open.
    pub fn breaker_reopens_in(&self) -> Option<Duration> {
        self.guard.breaker_reopens_in()
    }

    /// The account an order for `sub` created through this channel belongs to.
    pub fn account(&self, sub: &SubMerchant) -> Account {
        self.settings.account(sub)
    }

    /// Every attempt that reaches a verdict feeds the channel's health window: a success
    /// when the payer got an action, a failure when the channel or its account was at fault.
    /// On a partner / ISV channel an account refusal is about one sub-merchant's account (a
    /// revoked authorisation, an expired token), not the channel every merchant shares: it
    /// counts for nothing there, or one merchant could get the channel eliminated for all.
    pub async fn create(&self, order: &OrderRequest<'_>) -> Result<Created, ChannelError> {
        let shared = self.settings.needs_sub_merchant();
        self.call("create", |d| async move {
            let out = self.connector.create(order, d).await;
            let health = self.guard.health();
            match &out {
                Ok(_) => health.record(true, order.probe),
                Err(e) if shared && matches!(e.kind, ErrorKind::AccountRefused(_)) => {}
                Err(e) if e.is_channel_fault() => health.record(false, order.probe),
                Err(_) => {}
            }
            out
        })
        .await
    }

    /// The channel's health window.
    pub fn health(&self) -> &crate::resilience::ChannelHealth {
        self.guard.health()
    }

    /// See [`Connector::storable_action`]: what the record keeps of a payer action.
    pub fn storable_action(&self, action: &serde_json::Value) -> serde_json::Value {
        self.connector.storable_action(action)
    }

    /// See [`Connector::payer_action`]: a stored action made whole for the payer again.
    pub fn payer_action(
        &self,
        stored: &serde_json::Value,
        sub: &SubMerchant,
    ) -> Result<serde_json::Value, ChannelError> {
        self.connector.payer_action(stored, sub)
    }

    pub async fn query(
        &self,
        out_trade_no: &str,
        sub: &SubMerchant,
    ) -> Result<OrderState, ChannelError> {
        self.call("query", |d| self.connector.query(out_trade_no, sub, d))
            .await
    }

    pub async fn close(&self, out_trade_no: &str, sub: &SubMerchant) -> Result<(), ChannelError> {
        self.call("close", |d| self.connector.close(out_trade_no, sub, d))
            .await
    }

    pub async fn refund(&self, refund: &RefundRequest<'_>) -> Result<RefundState, ChannelError> {
        self.call("refund", |d| self.connector.refund(refund, d))
            .await
    }

    /// The account's trade statement file of a China calendar day (see
    /// [`Connector::trade_statement`]), on the guarded call path like every call.
    pub async fn trade_statement(
        &self,
        date: time::Date,
        sub: &SubMerchant,
    ) -> Result<StatementFile, ChannelError> {
        self.call("statement", |d| {
            self.connector.trade_statement(date, sub, d)
        })
        .await
    }

    pub async fn refund_query(
        &self,
        out_trade_no: &str,
        out_refund_no: &str,
        sub: &SubMerchant,
    ) -> Result<RefundState, ChannelError> {
        self.call("refund_query", |d| {
            self.connector
                .refund_query(out_trade_no, out_refund_no, sub, d)
        })
        .await
    }

    /// The one guarded call path: each attempt passes the channel's limit and breaker, then
    /// runs; retryable failures are retried on this channel with full-jitter backoff (or the
    /// provider's `Retry-After`) within one deadline and the retry budget.
    ///
    /// # Safety of retries
    /// The returned error is the last attempt's, with `maybe_sent` true if *any* attempt may
    /// have reached the provider: an open breaker after two 5xx is not "nothing sent".
    async fn call<T, F, Fut>(&self, op: &str, attempt: F) -> Result<T, ChannelError>
    where
        F: Fn(Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, ChannelError>>,
    {
        let started = tokio::time::Instant::now();
        let deadline = started + self.settings.timeout;
        let mut retries = 0;
        let mut maybe_sent = false;
        let result = loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let mut err = match self.attempt(attempt(remaining)).await {
                Ok(v) => break Ok(v),
                Err(e) => e,
            };
            maybe_sent |= err.maybe_sent;
            err.maybe_sent = maybe_sent;
            if !err.retryable() || retries >= MAX_RETRIES {
                break Err(err);
            }
            let wait = backoff(retries + 1, random_u64()).max(err.retry_after.unwrap_or_default());
            if tokio::time::Instant::now() + wait + MIN_ATTEMPT_TIME >= deadline {
                break Err(err);
            }
            if !self.guard.try_retry() {
                break Err(err);
            }
            retries += 1;
            self.metrics.retried(self.name(), err.label());
            crate::context::waiting(tokio::time::sleep(wait)).await;
        };
        self.observe(op, started, result.as_ref().err());
        result
    }

    /// One attempt: refused before sending by the limit or the breaker, else run and fed to
    /// the breaker.
    async fn attempt<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, ChannelError>>,
    ) -> Result<T, ChannelError> {
        match self.guard.admit() {
            Ok(()) => {
                let out = call.await;
                self.guard.record(match &out {
                    Err(e) if e.is_channel_down() => Outcome::Down,
                    _ => Outcome::Up,
                });
                out
            }
            Err(Refused::Limited(e)) => {
                Err(ChannelError::new(ErrorKind::ChannelLimit, e.to_string())
                    .with_retry_after(Some(e.retry_after)))
            }
            Err(e @ Refused::CircuitOpen(_)) => {
                Err(ChannelError::new(ErrorKind::CircuitOpen, e.to_string()))
            }
        }
    }

    fn observe(&self, op: &str, started: tokio::time::Instant, err: Option<&ChannelError>) {
        let name = self.name();
        let result = err.map_or(CALL_OK, ChannelError::label);
        self.metrics
            .requests
            .with_label_values(&[name, op, result])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[name, op])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// A channel of the config that could not be built (its outbound client).
#[derive(Clone, Debug, thiserror::Error)]
#[error("channels.{name}: {source}")]
pub struct BuildError {
    pub name: String,
    #[source]
    pub source: http::ClientError,
}

/// The channels of one config version, by name.
#[derive(Default)]
pub struct ChannelSet {
    channels: HashMap<String, Arc<Channel>>,
}

impl ChannelSet {
    pub fn build(
        settings: &BTreeMap<String, Arc<ChannelSettings>>,
        metrics: &Arc<ChannelMetrics>,
        resilience: &Arc<Resilience>,
    ) -> Result<ChannelSet, BuildError> {
        let mut channels = HashMap::new();
        for (name, s) in settings {
            let ch = Channel::build(s.clone(), metrics.clone(), resilience).map_err(|source| {
                BuildError {
                    name: name.clone(),
                    source,
                }
            })?;
            channels.insert(name.clone(), Arc::new(ch));
        }
        Ok(ChannelSet { channels })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Channel>> {
        self.channels.get(name)
    }

    /// A channel that holds `account` for a merchant with these sub-merchant ids (the
    /// lowest name, so the choice is stable).
    pub fn holding(&self, account: &Account, sub: &SubMerchant) -> Option<&Arc<Channel>> {
        self.channels
            .iter()
            .filter(|(_, ch)| ch.account(sub) == *account)
            .min_by(|a, b| a.0.cmp(b.0))
            .map(|(_, ch)| ch)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Channel>> {
        self.channels.values()
    }

    /// The channel that serves an order bound through `name` to `account` (None: bound
    /// before accounts were stored) for a merchant with these ids: the named one while it
    /// holds the account, else any that does.
    pub fn serving(
        &self,
        name: &str,
        account: Option<&Account>,
        sub: &SubMerchant,
    ) -> Option<&Arc<Channel>> {
        let named = self.get(name);
        match account {
            None => named,
            Some(a) => named
                .filter(|ch| ch.account(sub) == *a)
                .or_else(|| self.holding(a, sub)),
        }
    }

    /// Every channel, by name (a stable order for trying each in turn).
    pub fn by_name(&self) -> Vec<&Arc<Channel>> {
        let mut all: Vec<&Arc<Channel>> = self.channels.values().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).expect("system randomness");
    u64::from_le_bytes(b)
}
