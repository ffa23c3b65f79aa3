//! How a channel call failed, and what that allows next: the retry table of ARCHITECTURE.md
//! ("What is safe to retry") and whose fault it was (health).

use std::fmt;
use std::time::Duration;

/// How a channel call failed, which says what may be done next (ARCHITECTURE.md, "What is safe to
/// retry"). Only a verified answer from the provider produces `AlreadyPaid`, `NotCloseable`,
/// `NotFound` or `Rejected`: those are the kinds that may make a payment final.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Connect refused, DNS, TLS handshake: the provider never saw the request.
    NothingSent,
    /// The channel's own `limit` refused the call before sending: nothing sent either.
    ChannelLimit,
    /// The channel's circuit breaker is open: nothing sent, and no point retrying now.
    CircuitOpen,
    /// No answer within the deadline; the provider may have acted.
    Timeout,
    /// The connection broke after the request was written.
    Transport,
    /// HTTP 5xx without a known code.
    ServerError,
    /// The provider says try again (WeChat `SYSTEM_ERROR`, Alipay `ACQ.SYSTEM_ERROR`, …).
    ProviderRetryable(String),
    /// The order is paid already (WeChat `ORDERPAID`, Alipay `ACQ.TRADE_HAS_SUCCESS`).
    AlreadyPaid,
    /// The order's state does not allow the operation (Alipay `ACQ.TRADE_STATUS_ERROR` on
    /// close): which state it is in must be learnt by a query.
    NotCloseable,
    /// The provider's final business answer (`PARAM_ERROR`, …): its code, for the shop.
    Rejected(String),
    /// A final refusal that says the account itself cannot take payments (WeChat
    /// `NO_AUTH`, `APPID_MCHID_NOT_MATCH`; Alipay `ACQ.ACCESS_FORBIDDEN`, `isv.invalid-app-id`,
    /// …): nothing was created, as for `Rejected`, but the fault is the channel's, so it
    /// counts against the channel's health. Each connector names its provider's codes.
    AccountRefused(String),
    /// The provider does not know the order.
    NotFound,
    /// The answer's signature did not verify, or an answer that must be signed was not:
    /// it must not change any payment.
    BadSignature,
    /// The answer was not what the protocol promises.
    Protocol,
    /// We could not build the request (a local bug or config problem): nothing sent.
    Local,
}

impl ErrorKind {
    /// Whether an attempt that failed this way may have reached the provider.
    fn maybe_sent(&self) -> bool {
        !matches!(
            self,
            ErrorKind::NothingSent
                | ErrorKind::ChannelLimit
                | ErrorKind::CircuitOpen
                | ErrorKind::Local
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelError {
    pub kind: ErrorKind,
    pub message: String,
    /// Whether any attempt of the call may have reached the provider (sticky over retries).
    pub maybe_sent: bool,
    /// How long the provider (or the channel limit) asked us to wait.
    pub retry_after: Option<Duration>,
}

impl ChannelError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ChannelError {
        ChannelError {
            maybe_sent: kind.maybe_sent(),
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, after: Option<Duration>) -> ChannelError {
        self.retry_after = after;
        self
    }

    /// No attempt of the call can have reached the provider: safe to fail over.
    pub fn nothing_sent(&self) -> bool {
        !self.maybe_sent
    }

    /// Safe to retry on the same channel with the same out_trade_no.
    pub fn retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::NothingSent
                | ErrorKind::ChannelLimit
                | ErrorKind::Timeout
                | ErrorKind::Transport
                | ErrorKind::ServerError
                | ErrorKind::ProviderRetryable(_)
        )
    }

    /// Failures that say the channel itself is down (they feed the circuit breaker).
    pub fn is_channel_down(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::NothingSent
                | ErrorKind::Timeout
                | ErrorKind::Transport
                | ErrorKind::ServerError
                | ErrorKind::ProviderRetryable(_)
        )
    }

    /// Whether this failure of a create counts against the channel's health: the channel's
    /// or its account's fault (down, slow, broken answers, an account that cannot take
    /// payments). Our own refusals before sending (its limit, its open breaker, a request we
    /// could not build) and the shop's or buyer's errors count for nothing.
    pub fn is_channel_fault(&self) -> bool {
        self.is_channel_down()
            || matches!(
                self.kind,
                ErrorKind::BadSignature | ErrorKind::Protocol | ErrorKind::AccountRefused(_)
            )
    }

    /// A verified, final refusal: nothing was created or refunded.
    pub fn is_final_refusal(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Rejected(_) | ErrorKind::AccountRefused(_)
        )
    }

    /// Every [`ChannelError::label`]: a new one must be listed here to start at 0.
    pub const LABELS: [&'static str; 15] = [
        "nothing_sent",
        "channel_limit",
        "circuit_open",
        "timeout",
        "transport",
        "server_error",
        "retryable",
        "already_paid",
        "not_closeable",
        "rejected",
        "account_refused",
        "not_found",
        "bad_signature",
        "protocol",
        "local",
    ];

    /// Bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self.kind {
            ErrorKind::NothingSent => "nothing_sent",
            ErrorKind::ChannelLimit => "channel_limit",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Transport => "transport",
            ErrorKind::ServerError => "server_error",
            ErrorKind::ProviderRetryable(_) => "retryable",
            ErrorKind::AlreadyPaid => "already_paid",
            ErrorKind::NotCloseable => "not_closeable",
            ErrorKind::Rejected(_) => "rejected",
            ErrorKind::AccountRefused(_) => "account_refused",
            ErrorKind::NotFound => "not_found",
            ErrorKind::BadSignature => "bad_signature",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Local => "local",
        }
    }
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Rejected(code)
            | ErrorKind::AccountRefused(code)
            | ErrorKind::ProviderRetryable(code) => {
                write!(f, "{code}: {}", self.message)
            }
            _ => write!(f, "{}: {}", self.label(), self.message),
        }
    }
}

impl std::error::Error for ChannelError {}
