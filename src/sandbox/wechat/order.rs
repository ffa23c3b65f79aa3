//! A WeChat Pay order and its refunds as the sandbox keeps them.

use serde::ser::{Serialize, SerializeTuple, Serializer};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::channel::wechatpay::china_time;

#[derive(Clone, Debug, serde::Serialize)]
pub(in crate::sandbox) struct Order {
    pub(super) mchid: String,
    pub(super) sub_mchid: Option<String>,
    pub(super) out_trade_no: String,
    pub(super) trade_type: String,
    pub(super) amount: u64,
    pub(super) currency: String,
    pub(super) state: String,
    pub(super) prepay_id: String,
    pub(super) transaction_id: Option<String>,
    pub(super) success_time: Option<String>,
    /// The create request body exactly as received, for tests that check its shape.
    pub(super) request: Value,
    /// Refunds of this order, each shown as `[out_refund_no, amount, refund_id, status]`.
    pub(super) refunds: Vec<Refund>,
}

#[derive(Clone, Debug)]
pub(super) struct Refund {
    pub(super) out_refund_no: String,
    pub(super) amount: u64,
    pub(super) refund_id: String,
    /// `SUCCESS`, or what `Faults::refund_status` said.
    pub(super) status: String,
    /// Where its notification goes: the refund request's `notify_url`.
    pub(super) notify_url: String,
    /// When it succeeded (RFC 3339, China time), for `SUCCESS` refunds: its answers'
    /// `success_time` and its trade-bill row.
    pub(super) success_time: Option<String>,
}

impl Refund {
    /// A `CLOSED` refund gave the money back to the refundable amount.
    pub(super) fn holds_money(&self) -> bool {
        self.status != "CLOSED"
    }
}

/// As the tuple the orders view has always shown, with the status appended.
impl Serialize for Refund {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(4)?;
        t.serialize_element(&self.out_refund_no)?;
        t.serialize_element(&self.amount)?;
        t.serialize_element(&self.refund_id)?;
        t.serialize_element(&self.status)?;
        t.end()
    }
}

impl Order {
    pub(super) fn mchid(&self) -> &str {
        &self.mchid
    }

    /// The transaction object as WeChat Pay shows it: the query answer, and the plaintext
    /// of a `TRANSACTION.SUCCESS` notification.
    pub(super) fn transaction(&self) -> Value {
        let req = &self.request;
        let mut v = json!({
            "out_trade_no": self.out_trade_no, "trade_type": self.trade_type,
            "trade_state": self.state, "trade_state_desc": self.state,
            "amount": { "total": self.amount, "currency": self.currency, "payer_total": self.amount, "payer_currency": self.currency },
        });
        match &self.sub_mchid {
            None => {
                v["mchid"] = json!(self.mchid);
                v["appid"] = req["appid"].clone();
            }
            Some(sub) => {
                v["sp_mchid"] = json!(self.mchid);
                v["sp_appid"] = req["sp_appid"].clone();
                v["sub_mchid"] = json!(sub);
                if let Some(a) = req["sub_appid"].as_str() {
                    v["sub_appid"] = json!(a);
                }
            }
        }
        if let Some(a) = req["attach"].as_str() {
            v["attach"] = json!(a);
        }
        if let Some(t) = &self.transaction_id {
            v["transaction_id"] = json!(t);
            v["bank_type"] = json!("OTHERS");
            // The payer the request named, else a made-up (TEST-ONLY) one.
            v["payer"] = match req["payer"].as_object() {
                Some(p) if !p.is_empty() => Value::Object(p.clone()),
                _ if self.sub_mchid.is_some() => json!({"sp_openid": "oSandboxPayerTestOnly"}),
                _ => json!({"openid": "oSandboxPayerTestOnly"}),
            };
        }
        if let Some(t) = &self.success_time {
            v["success_time"] = json!(t);
        }
        v
    }

    /// `?late=true`: a closed order that was never paid takes a payment after all.
    pub(super) fn reopen_closed(&mut self) {
        if self.state == "CLOSED" && self.transaction_id.is_none() {
            self.state = "NOTPAY".into();
        }
    }

    /// The payer paid: only an open (`NOTPAY`) order can be.
    pub(super) fn mark_paid(&mut self, n: u64) -> bool {
        if self.state != "NOTPAY" {
            return false;
        }
        self.state = "SUCCESS".into();
        self.transaction_id = Some(format!("42000{n:023}"));
        self.success_time = Some(china_time(OffsetDateTime::now_utc()));
        true
    }

    /// The order as `GET /sandbox/orders` shows it: every field, plus the account.
    pub(super) fn view(&self) -> Value {
        let mut v = json!(self);
        v["account"] = json!({
            "provider": "wechatpay",
            "mode": if self.sub_mchid.is_some() { "partner" } else { "direct" },
            "mchid": self.mchid,
            "sub_mchid": self.sub_mchid,
        });
        v
    }
}
