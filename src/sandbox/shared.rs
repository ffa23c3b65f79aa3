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
use crate::domain::FeeRate;

/// Knobs for tests and benchmarks (`POST /sandbox/faults`); each POST replaces them all.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Added before every `/v3` and gateway answer, after the work.
    pub latency_ms: u64,
    /// Flip a byte of every answer's signature.
    pub tamper_signature: bool,
    /// Fail this many of the next signed `/v3` / gateway requests (of `fail_ops` and
    /// `accounts` when set) with `fail_status` / `fail_code`. Each failure is taken
    /// atomically: N concurrent requests consume at most `fail_next` failures between them.
    pub fail_next: u32,
    /// WeChat Pay's HTTP status of an injected failure; by default the status WeChat Pay
    /// documents for `fail_code` (`NO_AUTH` 403, `PARAM_ERROR` 400, `FREQUENCY_LIMITED` 429,
    /// …), 500 for `SYSTEM_ERROR` and codes it does not know. Alipay always answers HTTP 200.
    pub fail_status: Option<u16>,
    /// The injected error code: WeChat Pay's `code` (default `SYSTEM_ERROR`), Alipay's
    /// `sub_code` (default `ACQ.SYSTEM_ERROR`), whose `code` is the gateway's for it
    /// (`40004` for `ACQ.*`, `40002`/`40006` for `isv.*`, `20001` for `aop.*`, `20000` for
    /// `isp.*`).
    pub fail_code: Option<String>,
    /// Name the platform certificate's serial instead of the public key id.
    pub sign_with_certificate: bool,
    /// When set, `fail_next` only applies to (and is only consumed by) these operations:
    /// `create`, `query`, `close`, `refund`, `refund_query`, `statement`.
    pub fail_ops: Option<Vec<String>>,
    /// Injected failures go unsigned (WeChat: no `Wechatpay-*` headers; Alipay: no `sign`).
    pub fail_unsigned: bool,
    /// Tamper the signature of error answers only (non-2xx WeChat, code ≠ 10000 Alipay).
    pub tamper_errors: bool,
    /// Injected failures carry `Retry-After: N`.
    pub retry_after_secs: Option<u64>,
    /// When set, injected failures (`fail_next`, `fail_rate`) only apply to (and are only
    /// consumed by) requests of these accounts: a request matches when any of its account
    /// ids is listed — WeChat Pay: the signing `mchid` / `sp_mchid`, `sub_mchid` (body or
    /// query), `appid` / `sp_appid` / `sub_appid`; Alipay: `app_id`, and the seller the
    /// request acts for (ISV: the `2088…` seller id its `app_auth_token` is granted for;
    /// direct: the seller id the app's orders show).
    pub accounts: Option<Vec<String>>,
    /// Each request (of `fail_ops` and `accounts` when set) not failed by `fail_next` fails
    /// with this probability (0 to 1), answered as a `fail_next` failure is.
    pub fail_rate: f64,
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
    /// Statements asked for while set are broken: WeChat Pay answers a `hash_value` that
    /// does not match the file, Alipay's download is a truncated zip.
    pub corrupt_statements: bool,
    /// The fee rate of every statement row (a decimal string such as `"0.0038"`, parsed
    /// exactly), instead of the channel's `fee_rate`.
    pub statement_fee_rate: Option<String>,
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

    /// `statement_fee_rate` parsed (checked by [`Faults::check`]; `None` when unset).
    pub(super) fn statement_fee_rate(&self) -> Option<FeeRate> {
        self.statement_fee_rate
            .as_deref()
            .and_then(|r| FeeRate::parse(r).ok())
    }

    /// What deserialising cannot check; the error is the 400's message.
    pub(super) fn check(&self) -> Result<(), BadFaults> {
        if let Some(rate) = &self.statement_fee_rate {
            FeeRate::parse(rate).map_err(BadFaults::StatementFeeRate)?;
        }
        for op in self.fail_ops.iter().flatten() {
            if Op::from_name(op).is_none() {
                return Err(BadFaults::UnknownOp(op.clone()));
            }
        }
        // NaN is outside every range too.
        if !(0.0..=1.0).contains(&self.fail_rate) {
            return Err(BadFaults::FailRate(self.fail_rate));
        }
        if let Some(status) = self.fail_status.filter(|s| !(400..=599).contains(s)) {
            return Err(BadFaults::FailStatus(status));
        }
        match &self.accounts {
            Some(ids) if ids.is_empty() => return Err(BadFaults::NoAccounts),
            Some(ids) if ids.iter().any(|id| id.trim().is_empty()) => {
                return Err(BadFaults::BlankAccount)
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether an injected failure applies to a request of `op` (None: of no known
    /// operation) from an account with these ids.
    fn applies_to(&self, op: Option<Op>, ids: &[String]) -> bool {
        if let Some(ops) = &self.fail_ops {
            let Some(op) = op else { return false };
            if !ops.iter().any(|o| Op::from_name(o) == Some(op)) {
                return false;
            }
        }
        match &self.accounts {
            Some(listed) => ids.iter().any(|id| listed.contains(id)),
            None => true,
        }
    }
}

/// Faults refused by [`Faults::check`].
#[derive(Debug, PartialEq, thiserror::Error)]
pub(super) enum BadFaults {
    #[error(
        "unknown fail_ops entry {0:?} (create, query, close, refund, refund_query, statement)"
    )]
    UnknownOp(String),
    #[error("statement_fee_rate: {0}")]
    StatementFeeRate(String),
    #[error("fail_rate must be a probability from 0 to 1, not {0}")]
    FailRate(f64),
    #[error("fail_status must be an HTTP error status (400 to 599), not {0}")]
    FailStatus(u16),
    #[error("accounts is empty: list the merchant ids to fail, or leave it out for every account")]
    NoAccounts,
    #[error("accounts holds an empty merchant id")]
    BlankAccount,
}

/// True with probability `p` (0 to 1), from the system's random source.
fn chance(p: f64) -> bool {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        // No randomness: fail nothing rather than fail everything.
        return false;
    }
    // 53 random bits: a uniform float in [0, 1), so p = 1 always holds and p = 0 never.
    let x = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
    x < p
}

/// The operations `fail_ops` names, the same for both providers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Create,
    Query,
    Close,
    Refund,
    RefundQuery,
    /// Asking for a trade statement (WeChat Pay: and downloading it).
    Statement,
}

impl Op {
    fn from_name(name: &str) -> Option<Op> {
        Some(match name {
            "create" => Op::Create,
            "query" => Op::Query,
            "close" => Op::Close,
            "refund" => Op::Refund,
            "refund_query" => Op::RefundQuery,
            "statement" => Op::Statement,
            _ => return None,
        })
    }
}

/// An injected failure taken from [`Faults::fail_next`] or [`Faults::fail_rate`]: what to
/// answer instead of the work.
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

    /// Takes one injected failure for `op` if one is due: first from `fail_next`, else with
    /// probability `fail_rate`. The check and the decrement are one critical section, so
    /// concurrent requests never take more failures than `fail_next`. With `fail_ops` set,
    /// only those operations take (and consume) failures; a request of no known operation
    /// (`op` None) then takes none. With `accounts` set, only requests one of whose account
    /// `ids` is listed take them (the simulator names the ids only when `accounts` is set).
    pub(super) fn take_failure(&self, op: Option<Op>, ids: &[String]) -> Option<Injected> {
        let mut f = self.faults();
        if f.fail_next == 0 && f.fail_rate <= 0.0 {
            return None;
        }
        if !f.applies_to(op, ids) {
            return None;
        }
        if f.fail_next > 0 {
            f.fail_next -= 1;
        } else if !chance(f.fail_rate) {
            return None;
        }
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
                            .filter(|_| sb.take_failure(Some(Op::Create), &[]).is_some())
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
        assert!(sb.take_failure(Some(Op::Create), &[]).is_none());
        assert!(sb.take_failure(Some(Op::RefundQuery), &[]).is_none());
        assert!(
            sb.take_failure(None, &[]).is_none(),
            "an unknown API takes none"
        );
        assert_eq!(sb.faults().fail_next, 1, "not consumed by other operations");
        let f = sb
            .take_failure(Some(Op::Refund), &[])
            .expect("a refund takes it");
        assert_eq!((f.status, f.code.as_deref()), (Some(503), Some("X")));
        assert!(sb.take_failure(Some(Op::Refund), &[]).is_none());

        // Without fail_ops every request takes one, even of an unknown API.
        set(&sb, json!({ "fail_next": 2 }));
        assert!(sb.take_failure(None, &[]).is_some());
        assert!(sb.take_failure(Some(Op::Query), &[]).is_some());
        assert!(sb.take_failure(Some(Op::Query), &[]).is_none());
    }

    fn ids(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn accounts_limit_which_requests_take_and_consume_failures() {
        let sb = shared();
        set(
            &sb,
            json!({ "fail_next": 2, "accounts": ["1900000109", "2088000000004004"] }),
        );
        let create = Some(Op::Create);
        assert!(sb.take_failure(create, &ids(&["1900000100"])).is_none());
        assert!(sb.take_failure(create, &[]).is_none(), "no ids, no match");
        assert_eq!(sb.faults().fail_next, 2, "not consumed by other accounts");
        // Any one of the request's ids listed is enough.
        let partner = ids(&["1900000100", "1900000109", "wx8888888888888888"]);
        assert!(sb.take_failure(create, &partner).is_some());
        assert!(sb
            .take_failure(None, &ids(&["2021000000000001", "2088000000004004"]))
            .is_some());
        assert!(sb.take_failure(create, &partner).is_none(), "two only");

        // With fail_ops too, both must match.
        set(
            &sb,
            json!({ "fail_next": 1, "accounts": ["A"], "fail_ops": ["query"] }),
        );
        assert!(sb.take_failure(create, &ids(&["A"])).is_none());
        assert!(sb.take_failure(Some(Op::Query), &ids(&["B"])).is_none());
        assert!(sb.take_failure(Some(Op::Query), &ids(&["A"])).is_some());

        // Without accounts the ids do not matter.
        set(&sb, json!({ "fail_next": 1 }));
        assert!(sb.take_failure(create, &[]).is_some());
    }

    #[test]
    fn fail_rate_fails_that_share_after_fail_next_and_only_where_it_applies() {
        let sb = shared();
        let a = ids(&["A"]);
        set(&sb, json!({ "fail_rate": 1.0, "fail_code": "NO_AUTH" }));
        for _ in 0..100 {
            let f = sb
                .take_failure(Some(Op::Create), &a)
                .expect("rate 1 always");
            assert_eq!(f.code.as_deref(), Some("NO_AUTH"));
        }
        set(&sb, json!({ "fail_rate": 0.0 }));
        assert!((0..100).all(|_| sb.take_failure(Some(Op::Create), &a).is_none()));

        // Half: between 40% and 60% of 2,000 (a miss is about 9 standard deviations away).
        set(&sb, json!({ "fail_rate": 0.5 }));
        let failed = (0..2_000)
            .filter(|_| sb.take_failure(Some(Op::Query), &a).is_some())
            .count();
        assert!((800..=1_200).contains(&failed), "{failed} of 2000");

        // fail_next is taken first, then the rate goes on.
        set(&sb, json!({ "fail_next": 3, "fail_rate": 1.0 }));
        assert!(sb.take_failure(None, &a).is_some());
        assert_eq!(sb.faults().fail_next, 2);
        set(&sb, json!({ "fail_next": 2, "fail_rate": 0.0 }));
        assert_eq!(
            (0..10)
                .filter(|_| sb.take_failure(None, &a).is_some())
                .count(),
            2
        );

        // fail_ops and accounts limit the rate as they limit fail_next.
        set(
            &sb,
            json!({ "fail_rate": 1.0, "fail_ops": ["create"], "accounts": ["A"] }),
        );
        assert!(sb.take_failure(Some(Op::Refund), &a).is_none());
        assert!(sb.take_failure(Some(Op::Create), &ids(&["B"])).is_none());
        assert!(sb.take_failure(Some(Op::Create), &a).is_some());
    }

    #[test]
    fn bad_rates_statuses_and_accounts_are_refused_with_what_is_wrong() {
        let check = |v: Value| {
            serde_json::from_value::<Faults>(v)
                .unwrap()
                .check()
                .map_err(|e| e.to_string())
        };
        for rate in [-0.1, 1.000_001, 2.0] {
            let e = check(json!({ "fail_rate": rate })).unwrap_err();
            assert!(
                e.starts_with("fail_rate must be a probability from 0 to 1"),
                "{e}"
            );
        }
        // JSON has no NaN or infinity; a Faults made in code is checked all the same.
        for rate in [f64::NAN, f64::INFINITY] {
            let f = Faults {
                fail_rate: rate,
                ..Faults::default()
            };
            let e = f.check().unwrap_err();
            assert!(matches!(e, BadFaults::FailRate(_)), "{e}");
            assert!(e.to_string().ends_with(&format!("not {rate}")), "{e}");
        }
        for rate in [0.0, 0.5, 1.0] {
            check(json!({ "fail_rate": rate })).unwrap();
        }
        assert!(serde_json::from_value::<Faults>(json!({ "fail_rate": "half" })).is_err());
        for status in [0, 200, 302, 600] {
            let e = check(json!({ "fail_status": status })).unwrap_err();
            assert!(
                e.contains("fail_status must be an HTTP error status"),
                "{e}"
            );
        }
        check(json!({ "fail_status": 403 })).unwrap();
        let e = check(json!({ "accounts": [] })).unwrap_err();
        assert!(e.starts_with("accounts is empty"), "{e}");
        let e = check(json!({ "accounts": ["1900000109", " "] })).unwrap_err();
        assert!(e.contains("empty merchant id"), "{e}");
        check(json!({ "accounts": ["1900000109"] })).unwrap();
        for (bad, says) in [
            ("0.38%", "is not a decimal fraction"),
            ("1.5", "is above 1"),
            ("0.0000001", "more than 6 decimals"),
            ("", "is not a decimal fraction"),
        ] {
            let e = check(json!({ "statement_fee_rate": bad })).unwrap_err();
            assert!(
                e.starts_with("statement_fee_rate: ") && e.contains(says),
                "{e}"
            );
        }
        assert!(serde_json::from_value::<Faults>(json!({ "statement_fee_rate": 0.006 })).is_err());
        let f: Faults = serde_json::from_value(json!({ "statement_fee_rate": "0.0038" })).unwrap();
        f.check().unwrap();
        assert_eq!(f.statement_fee_rate(), Some(FeeRate { ppm: 3800 }));
        assert_eq!(Faults::default().statement_fee_rate(), None);
    }

    #[test]
    fn faults_reject_unknown_knobs_and_operations() {
        assert!(serde_json::from_value::<Faults>(json!({ "fail_nxet": 1 })).is_err());
        let f: Faults = serde_json::from_value(json!({ "fail_ops": ["create", "pay"] })).unwrap();
        assert_eq!(f.check().unwrap_err(), BadFaults::UnknownOp("pay".into()));
        let all = json!({
            "latency_ms": 5, "tamper_signature": false, "fail_next": 2, "fail_status": 500,
            "fail_code": "SYSTEM_ERROR", "sign_with_certificate": false,
            "fail_ops": ["create", "query", "close", "refund", "refund_query", "statement"],
            "fail_unsigned": true, "tamper_errors": true, "retry_after_secs": 3,
            "accounts": ["1900000109", "2088000000004004"], "fail_rate": 0.25,
            "refund_status": "ABNORMAL", "alipay_refund_pending": true,
            "drop_notifications": true, "duplicate_notifications": true, "notify_delay_ms": 9,
            "corrupt_statements": true, "statement_fee_rate": "0.0038",
        });
        let f: Faults = serde_json::from_value(all.clone()).unwrap();
        f.check().unwrap();
        assert_eq!(json!(f), all);
    }
}
