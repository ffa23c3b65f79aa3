//! What both simulators share: the faults (`POST /sandbox/faults`) and the one path every
//! answer takes (work → latency → signature), the notifier, and the id counter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::notify::{Notification, Notifier, Plan};
use super::settings::SandboxMerchant;
use crate::channel::keys::RsaSigner;

/// Knobs for tests and benchmarks (`POST /sandbox/faults`); each POST replaces them all.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Added before every `/v3` and gateway answer, after the work.
    pub latency_ms: u64,
    /// Flip a byte of every answer's signature.
    pub tamper_signature: bool,
    /// Fail this many of the next signed `/v3` / gateway requests (of `fail_ops` when set)
    /// with `fail_status` / `fail_code`. Each failure is taken atomically: N concurrent
    /// requests consume at most `fail_next` failures between them.
    pub fail_next: u32,
    pub fail_status: Option<u16>,
    pub fail_code: Option<String>,
    /// Name the platform certificate's serial instead of the public key id.
    pub sign_with_certificate: bool,
    /// When set, `fail_next` only applies to (and is only consumed by) these operations:
    /// `create`, `query`, `close`, `refund`, `refund_query`.
    pub fail_ops: Option<Vec<String>>,
    /// Injected failures go unsigned (WeChat: no `Wechatpay-*` headers; Alipay: no `sign`).
    pub fail_unsigned: bool,
    /// Tamper the signature of error answers only (non-2xx WeChat, code ≠ 10000 Alipay).
    pub tamper_errors: bool,
    /// Injected failures carry `Retry-After: N`.
    pub retry_after_secs: Option<u64>,
    /// WeChat refunds are created with this `status` (`PROCESSING`, `ABNORMAL`, `CLOSED`)
    /// instead of `SUCCESS`, and keep it. All but `CLOSED` count against the refundable amount.
    pub refund_status: Option<String>,
    /// `alipay.trade.refund` accepts with `fund_change: "N"` and records the refund as
    /// processing; the next `alipay.trade.fastpay.refund.query` finds it settled.
    pub alipay_refund_pending: bool,
    /// Notifications are not sent at all, as if lost (recorded with attempt 0, `dropped`).
    pub drop_notifications: bool,
    /// Each notification is sent once more right after the first answered attempt.
    pub duplicate_notifications: bool,
    /// Wait this long before the first attempt of each notification.
    pub notify_delay_ms: u64,
}

impl Faults {
    /// How notifications made now are to be delivered.
    pub(super) fn plan(&self) -> Plan {
        Plan {
            drop: self.drop_notifications,
            duplicate: self.duplicate_notifications,
            delay_ms: self.notify_delay_ms,
        }
    }

    pub(super) fn check(&self) -> Result<(), UnknownOp> {
        for op in self.fail_ops.iter().flatten() {
            if Op::from_name(op).is_none() {
                return Err(UnknownOp(op.clone()));
            }
        }
        Ok(())
    }
}

/// A `fail_ops` entry that names no operation.
#[derive(Debug, thiserror::Error)]
#[error("unknown fail_ops entry {0:?} (create, query, close, refund, refund_query)")]
pub(super) struct UnknownOp(String);

/// The operations `fail_ops` names, the same for both providers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Create,
    Query,
    Close,
    Refund,
    RefundQuery,
}

impl Op {
    fn from_name(name: &str) -> Option<Op> {
        Some(match name {
            "create" => Op::Create,
            "query" => Op::Query,
            "close" => Op::Close,
            "refund" => Op::Refund,
            "refund_query" => Op::RefundQuery,
            _ => return None,
        })
    }
}

/// An injected failure taken from [`Faults::fail_next`]: what to answer instead of the work.
pub(super) struct Injected {
    pub(super) status: Option<u16>,
    pub(super) code: Option<String>,
}

/// What a simulator's work produced, before latency and signing.
pub(super) struct Outcome<T> {
    pub(super) answer: T,
    /// Answered by an injected failure, before any work was done.
    pub(super) injected: bool,
    /// An error answer: non-2xx at WeChat Pay, code ≠ 10000 at Alipay.
    pub(super) error: bool,
}

impl<T> Outcome<T> {
    pub(super) fn done(answer: T, error: bool) -> Self {
        Outcome {
            answer,
            injected: false,
            error,
        }
    }

    pub(super) fn injected(answer: T) -> Self {
        Outcome {
            answer,
            injected: true,
            error: true,
        }
    }
}

/// How one answer is to be signed, decided from the faults and the outcome.
pub(super) struct Signing {
    /// False: the answer goes out with no signature at all (`fail_unsigned`).
    pub(super) sign: bool,
    pub(super) tamper: bool,
    /// WeChat Pay: name the platform certificate's serial.
    pub(super) with_certificate: bool,
}

impl Signing {
    /// The base64 signature of `msg`, tampered when asked; `None` for an unsigned answer.
    pub(super) fn signature(&self, signer: &RsaSigner, msg: &[u8]) -> Option<String> {
        if !self.sign {
            return None;
        }
        let sig = signer.sign_b64(msg);
        Some(if self.tamper { tamper(&sig) } else { sig })
    }
}

/// Orders and create-call counts, keyed by (account, out_trade_no).
pub(super) type Orders<O> = DashMap<(String, String), O>;

pub(super) type Answer = Response<Full<Bytes>>;

/// The state both simulators answer through.
pub(super) struct Shared {
    faults: Mutex<Faults>,
    counter: AtomicU64,
    pub(super) notifier: Arc<Notifier>,
}

impl Shared {
    pub(super) fn new(notifier: Arc<Notifier>) -> Shared {
        Shared {
            faults: Mutex::new(Faults::default()),
            counter: AtomicU64::new(1),
            notifier,
        }
    }

    /// The faults; the one place that gets past a poisoned lock (nothing panics under it).
    pub(super) fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one injected failure for `op` if one is due. The check and the decrement are one
    /// critical section, so concurrent requests never take more failures than `fail_next`.
    /// With `fail_ops` set, only those operations take (and consume) failures; a request of
    /// no known operation (`op` None) then takes none.
    pub(super) fn take_failure(&self, op: Option<Op>) -> Option<Injected> {
        let mut f = self.faults();
        if f.fail_next == 0 {
            return None;
        }
        if let Some(ops) = &f.fail_ops {
            let op = op?;
            if !ops.iter().any(|o| Op::from_name(o) == Some(op)) {
                return None;
            }
        }
        f.fail_next -= 1;
        Some(Injected {
            status: f.fail_status,
            code: f.fail_code.clone(),
        })
    }

    /// The path every simulated API answer takes: the work (signature check, injected
    /// failure or the real work), then the injected latency — after the work, as a real late
    /// answer comes after the provider acted, which is what makes a timeout dangerous — then
    /// the signature as the faults say, then `Retry-After` on an injected failure.
    pub(super) async fn respond<T>(
        &self,
        work: impl FnOnce(&Faults) -> Outcome<T>,
        finish: impl FnOnce(T, &Signing) -> Answer,
    ) -> Answer {
        let faults = self.faults().clone();
        let out = work(&faults);
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        let signing = Signing {
            sign: !(out.injected && faults.fail_unsigned),
            tamper: faults.tamper_signature || (faults.tamper_errors && out.error),
            with_certificate: faults.sign_with_certificate,
        };
        let mut resp = finish(out.answer, &signing);
        if let (true, Some(secs)) = (out.injected, faults.retry_after_secs) {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        resp
    }

    /// Starts delivering a notification as the faults planned.
    pub(super) fn notify(&self, n: Notification, plan: Plan) {
        self.notifier.dispatch(n, plan);
    }

    pub(super) fn next_id(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }
}

/// Counts one call (a create, a query) for (account, out_trade_no).
pub(super) fn count_call(calls: &Orders<u32>, account: &str, no: &str) {
    *calls
        .entry((account.to_string(), no.to_string()))
        .or_insert(0) += 1;
}

/// Changes one base64 character so the signature no longer verifies but still decodes.
pub(super) fn tamper(sig: &str) -> String {
    let mut chars: Vec<char> = sig.chars().collect();
    if let Some(c) = chars.get_mut(10) {
        *c = if *c == 'A' { 'B' } else { 'A' };
    }
    chars.into_iter().collect()
}

pub(super) fn query_param(path_and_query: &str, name: &str) -> Option<String> {
    let q = path_and_query.split_once('?')?.1;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

pub(super) fn plain(status: StatusCode, body: Value) -> Answer {
    crate::server::json_response(status, &body)
}

/// What the sandbox asks of each simulated provider besides its own API routes: the one
/// interface `Sandbox` dispatches through instead of knowing both providers' state.
pub(super) trait Simulator: Send + Sync {
    /// Takes this provider's keys (and grants) from the configured merchants; the rest it
    /// ignores.
    fn set_merchants(&self, merchants: &[SandboxMerchant]);

    /// `POST /sandbox/pay/{no}`: marks this provider's open orders `no` paid (`late`: closed,
    /// never-paid ones too; `only`: only that WeChat Pay mchid's). Returns their views and the
    /// notifications to send, which the caller sends once no order is locked any more.
    fn pay(
        &self,
        no: &str,
        only: Option<&str>,
        late: bool,
        faults: &Faults,
    ) -> (Vec<Value>, Vec<Notification>);

    /// `GET /sandbox/orders/{no}`: this provider's orders `no` at any account.
    fn orders(&self, no: &str) -> Vec<Value>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shared() -> Arc<Shared> {
        Arc::new(Shared::new(Notifier::new(Arc::new(
            super::super::notify::HttpTransport::default(),
        ))))
    }

    fn set(sb: &Shared, faults: Value) {
        let f: Faults = serde_json::from_value(faults).unwrap();
        f.check().unwrap();
        *sb.faults() = f;
    }

    /// Concurrent takers never get more failures than `fail_next` between them.
    #[test]
    fn fail_next_is_taken_atomically() {
        for (fail_next, takers) in [(1u32, 16usize), (3, 16), (0, 8)] {
            let sb = shared();
            set(&sb, json!({ "fail_next": fail_next }));
            let barrier = Arc::new(std::sync::Barrier::new(takers));
            let handles: Vec<_> = (0..takers)
                .map(|_| {
                    let (sb, barrier) = (sb.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        (0..4)
                            .filter(|_| sb.take_failure(Some(Op::Create)).is_some())
                            .count()
                    })
                })
                .collect();
            let taken: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
            assert_eq!(taken, fail_next as usize);
            assert_eq!(sb.faults().fail_next, 0);
        }
    }

    #[test]
    fn fail_ops_limits_which_operations_take_failures() {
        let sb = shared();
        set(
            &sb,
            json!({ "fail_next": 1, "fail_ops": ["refund"], "fail_status": 503, "fail_code": "X" }),
        );
        assert!(sb.take_failure(Some(Op::Create)).is_none());
        assert!(sb.take_failure(Some(Op::RefundQuery)).is_none());
        assert!(sb.take_failure(None).is_none(), "an unknown API takes none");
        assert_eq!(sb.faults().fail_next, 1, "not consumed by other operations");
        let f = sb
            .take_failure(Some(Op::Refund))
            .expect("a refund takes it");
        assert_eq!((f.status, f.code.as_deref()), (Some(503), Some("X")));
        assert!(sb.take_failure(Some(Op::Refund)).is_none());

        // Without fail_ops every request takes one, even of an unknown API.
        set(&sb, json!({ "fail_next": 2 }));
        assert!(sb.take_failure(None).is_some());
        assert!(sb.take_failure(Some(Op::Query)).is_some());
        assert!(sb.take_failure(Some(Op::Query)).is_none());
    }

    #[test]
    fn faults_reject_unknown_knobs_and_operations() {
        assert!(serde_json::from_value::<Faults>(json!({ "fail_nxet": 1 })).is_err());
        let f: Faults = serde_json::from_value(json!({ "fail_ops": ["create", "pay"] })).unwrap();
        assert_eq!(f.check().unwrap_err().0, "pay");
        let all = json!({
            "latency_ms": 5, "tamper_signature": false, "fail_next": 2, "fail_status": 500,
            "fail_code": "SYSTEM_ERROR", "sign_with_certificate": false,
            "fail_ops": ["create", "query", "close", "refund", "refund_query"],
            "fail_unsigned": true, "tamper_errors": true, "retry_after_secs": 3,
            "refund_status": "ABNORMAL", "alipay_refund_pending": true,
            "drop_notifications": true, "duplicate_notifications": true, "notify_delay_ms": 9,
        });
        let f: Faults = serde_json::from_value(all.clone()).unwrap();
        f.check().unwrap();
        assert_eq!(json!(f), all);
    }
}
