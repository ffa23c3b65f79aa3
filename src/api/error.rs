//! The one place where errors become HTTP responses (ARCHITECTURE.md, "The unified API and its
//! errors").

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::domain::ChannelFailure;
use crate::payment::{failure_of, PaymentError};
use crate::resilience::RateLimited;
use crate::server::{json_response, Refusal};
use crate::store::StoreError;

/// The error codes of the unified API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthorized,
    /// `server.tls.client_ca` is set and the shop's connection presented no verified
    /// client certificate (`/notify/*` never needs one).
    ClientCertificateRequired,
    ForbiddenMerchant,
    InvalidRequest,
    InvalidAmount,
    PayloadTooLarge,
    NotFound,
    MethodNotAllowed,
    IdempotencyMismatch,
    /// The merchant's `out_trade_no` is held by an order another shop created.
    OutTradeNoTaken,
    /// The merchant's `out_refund_no` is held by a refund another shop asked for.
    OutRefundNoTaken,
    RequestInProgress,
    InvalidState,
    /// Admin: an event still pending cannot be resent (it is queued, maybe in flight).
    EventPending,
    NoRoute,
    RateLimited,
    ChannelRejected,
    ChannelUnavailable,
    ChannelError,
    ChannelTimeout,
    /// The admin API is off (no `admin.token` configured).
    Forbidden,
    /// The store cannot take a write or answer a read (disk full, I/O error): nothing was
    /// sent to any channel for the write that failed first.
    StoreUnavailable,
    /// The listener is at `server.max_in_flight`: refused at once, retry after `Retry-After`.
    Overloaded,
    /// No answer within `server.request_timeout`; the work goes on, so a retry with the same
    /// `out_trade_no` finds its outcome.
    RequestTimeout,
    /// Our own failure (the store, a bug); details are in the log, not the answer.
    InternalError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            Unauthorized => "unauthorized",
            ClientCertificateRequired => "client_certificate_required",
            ForbiddenMerchant => "forbidden_merchant",
            InvalidRequest => "invalid_request",
            InvalidAmount => "invalid_amount",
            PayloadTooLarge => "payload_too_large",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            IdempotencyMismatch => "idempotency_mismatch",
            OutTradeNoTaken => "out_trade_no_taken",
            OutRefundNoTaken => "out_refund_no_taken",
            RequestInProgress => "request_in_progress",
            InvalidState => "invalid_state",
            EventPending => "event_pending",
            NoRoute => "no_route",
            RateLimited => "rate_limited",
            ChannelRejected => "channel_rejected",
            ChannelUnavailable => "channel_unavailable",
            ChannelError => "channel_error",
            ChannelTimeout => "channel_timeout",
            Forbidden => "forbidden",
            StoreUnavailable => "store_unavailable",
            Overloaded => "overloaded",
            RequestTimeout => "request_timeout",
            InternalError => "internal_error",
        }
    }

    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            Unauthorized | ClientCertificateRequired => StatusCode::UNAUTHORIZED,
            ForbiddenMerchant | Forbidden => StatusCode::FORBIDDEN,
            InvalidRequest | InvalidAmount => StatusCode::BAD_REQUEST,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            IdempotencyMismatch | OutTradeNoTaken | OutRefundNoTaken | RequestInProgress
            | InvalidState | EventPending => StatusCode::CONFLICT,
            NoRoute => StatusCode::UNPROCESSABLE_ENTITY,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ChannelRejected => StatusCode::PAYMENT_REQUIRED,
            ChannelUnavailable | StoreUnavailable | Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ChannelError => StatusCode::BAD_GATEWAY,
            ChannelTimeout | RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
            InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the same request may succeed later.
    pub fn retryable(self) -> bool {
        use ErrorCode::*;
        matches!(
            self,
            RequestInProgress
                | RateLimited
                | ChannelUnavailable
                | ChannelError
                | ChannelTimeout
                | StoreUnavailable
                | Overloaded
                | RequestTimeout
                | InternalError
        )
    }
}

impl From<ChannelFailure> for ErrorCode {
    fn from(f: ChannelFailure) -> ErrorCode {
        match f {
            ChannelFailure::Rejected => ErrorCode::ChannelRejected,
            ChannelFailure::Unavailable => ErrorCode::ChannelUnavailable,
            ChannelFailure::Error => ErrorCode::ChannelError,
            ChannelFailure::Timeout => ErrorCode::ChannelTimeout,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
    /// Payment state carried by channel errors, so the shop sees `status: unknown`.
    pub payment: Option<serde_json::Value>,
    /// Sent as `Retry-After` (whole seconds, rounded up).
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            field: None,
            payment: None,
            retry_after: None,
        }
    }

    pub fn field(code: ErrorCode, field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            field: Some(field.to_string()),
            payment: None,
            retry_after: None,
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut error = json!({
            "code": self.code.as_str(),
            "message": self.message,
            "retryable": self.code.retryable(),
        });
        if let Some(f) = self.field {
            error["field"] = json!(f);
        }
        let mut body = json!({ "error": error });
        if let Some(p) = self.payment {
            body["payment"] = p;
        }
        let mut resp = json_response(self.code.status(), &body);
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, http::HeaderValue::from(secs.max(1)));
        }
        resp
    }
}

/// How soon a shed request may come back.
const OVERLOADED_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The listener's own answers (see [`crate::server::serve`]), in the API's error format.
pub fn refusal(r: Refusal) -> Response<Full<Bytes>> {
    let api = match r {
        Refusal::Overloaded => {
            let mut api = ApiError::new(
                ErrorCode::Overloaded,
                "too many requests in flight; retry shortly",
            );
            api.retry_after = Some(OVERLOADED_RETRY_AFTER);
            api
        }
        Refusal::TimedOut => ApiError::new(
            ErrorCode::RequestTimeout,
            "no answer in time; the request goes on, retry it to learn its outcome",
        ),
        Refusal::Failed => ApiError::new(
            ErrorCode::InternalError,
            "internal error; see the proxy's log",
        ),
    };
    api.into_response()
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "store unavailable");
                let mut api = ApiError::new(
                    ErrorCode::StoreUnavailable,
                    "the store cannot take writes now; retry shortly",
                );
                api.retry_after = Some(OVERLOADED_RETRY_AFTER);
                api
            }
            StoreError::Backend(_) | StoreError::Corrupt(_) => {
                tracing::error!(error = %e, "store failure");
                ApiError::new(
                    ErrorCode::InternalError,
                    "internal error; see the proxy's log",
                )
            }
        }
    }
}

impl From<RateLimited> for ApiError {
    fn from(e: RateLimited) -> ApiError {
        let mut api = ApiError::new(
            ErrorCode::RateLimited,
            format!("rate limit {:?} reached", e.limit),
        );
        api.retry_after = Some(e.retry_after);
        api
    }
}

impl From<PaymentError> for ApiError {
    fn from(e: PaymentError) -> ApiError {
        match e {
            PaymentError::NoRoute(r) => ApiError::new(ErrorCode::NoRoute, r.to_string()),
            PaymentError::Invalid { field, message } => {
                ApiError::field(ErrorCode::InvalidRequest, field, message)
            }
            PaymentError::Channel { error, payment } => {
                let code = ErrorCode::from(failure_of(&error));
                let mut api = ApiError::new(code, format!("channel {}: {error}", payment.channel));
                api.payment = Some(crate::payment::view::payment_json(&payment));
                api
            }
            PaymentError::Stored { code, message } => ApiError::new(code.into(), message),
            PaymentError::AccountUnavailable(why) | PaymentError::NoChannelNow(why) => {
                ApiError::new(ErrorCode::ChannelUnavailable, why)
            }
            PaymentError::IdempotencyMismatch => ApiError::new(
                ErrorCode::IdempotencyMismatch,
                "this out_trade_no was already used with a different request",
            ),
            // Only that the number is taken: nothing of the other shop's order or refund.
            PaymentError::OutTradeNoTaken => ApiError::field(
                ErrorCode::OutTradeNoTaken,
                "out_trade_no",
                "this out_trade_no is taken by another shop's order for this merchant; use another",
            ),
            PaymentError::OutRefundNoTaken => ApiError::field(
                ErrorCode::OutRefundNoTaken,
                "out_refund_no",
                "this out_refund_no is taken by another shop's refund for this merchant; use another",
            ),
            PaymentError::InProgress => ApiError::new(
                ErrorCode::RequestInProgress,
                "a request for this out_trade_no is in progress; retry shortly",
            ),
            PaymentError::NotFound => ApiError::new(ErrorCode::NotFound, "no such payment"),
            // Answered inside the payment layer from the record; never expected here.
            PaymentError::Superseded(_) => ApiError::new(
                ErrorCode::RequestInProgress,
                "another request took this order over; retry shortly to learn its outcome",
            ),
            PaymentError::InvalidState { message, payment } => {
                let mut api = ApiError::new(ErrorCode::InvalidState, message);
                api.payment = Some(crate::payment::view::payment_json(&payment));
                api
            }
            PaymentError::Store(e) => ApiError::from(e),
            PaymentError::Unrecorded { error, payment } => {
                let mut api = ApiError::from(error);
                api.message = format!(
                    "channel {:?} may have the order, but the store failed to record its answer; \
                     its status is unknown: retry with the same out_trade_no, which goes to the \
                     same channel",
                    payment.channel
                );
                api.payment = Some(crate::payment::view::payment_json(&payment));
                api
            }
        }
    }
}
