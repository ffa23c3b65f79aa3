//! An Alipay trade and its refunds as the sandbox keeps them.

use serde::ser::{Serialize, SerializeTuple, Serializer};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::channel::alipay::china_datetime;

#[derive(Clone, Debug, serde::Serialize)]
pub(in crate::sandbox) struct AliOrder {
    pub(super) app_id: String,
    /// `app_auth_token` in ISV mode, as the create came.
    pub(super) app_auth_token: Option<String>,
    /// Whose money it is: the seller the ISV token acts for, or (direct) a stable made-up
    /// user id of the app's owner. Signed into every notification as `seller_id`.
    pub(super) seller_id: String,
    pub(super) out_trade_no: String,
    pub(super) method: String,
    pub(super) amount: u64,
    pub(super) subject: String,
    pub(super) state: String,
    pub(super) trade_no: Option<String>,
    /// When the order came into being (`gmt_create` of its notifications).
    pub(super) gmt_create: String,
    pub(super) send_pay_date: Option<String>,
    /// Every request parameter as received except `sign` (biz_content parsed).
    pub(super) request: Value,
    /// Refunds, each shown as `[out_request_no, amount, status]`.
    pub(super) refunds: Vec<AliRefund>,
}

#[derive(Clone, Debug)]
pub(super) struct AliRefund {
    pub(super) out_request_no: String,
    pub(super) amount: u64,
    /// False while processing (`Faults::alipay_refund_pending`): no money moved yet.
    pub(super) settled: bool,
    /// When it settled (China time `YYYY-MM-DD HH:MM:SS`): its statement row's 完成时间.
    pub(super) gmt_refund: Option<String>,
}

/// As the tuple the orders view has always shown, with the status appended.
impl Serialize for AliRefund {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(3)?;
        t.serialize_element(&self.out_request_no)?;
        t.serialize_element(&self.amount)?;
        t.serialize_element(if self.settled {
            "REFUND_SUCCESS"
        } else {
            "REFUND_PROCESSING"
        })?;
        t.end()
    }
}

impl AliOrder {
    /// `?late=true`: a closed trade that was never paid takes a payment after all.
    pub(super) fn reopen_closed(&mut self) {
        if self.state == "TRADE_CLOSED" && self.trade_no.is_none() {
            self.state = "WAIT_BUYER_PAY".into();
        }
    }

    pub(super) fn mark_paid(&mut self, n: u64) -> bool {
        if self.state != "WAIT_BUYER_PAY" {
            return false;
        }
        self.state = "TRADE_SUCCESS".into();
        self.trade_no = Some(format!("2026{n:024}"));
        self.send_pay_date = Some(china_datetime(OffsetDateTime::now_utc()));
        true
    }

    /// The order as `GET /sandbox/orders` shows it: every field, plus the account (which
    /// says whether an app_auth_token came, never the token).
    pub(super) fn view(&self) -> Value {
        let mut v = json!(self);
        v["account"] = json!({
            "provider": "alipay",
            "app_id": self.app_id,
            "app_auth_token_present": self.app_auth_token.is_some(),
        });
        v
    }

    /// What has been refunded so far: settled refunds only.
    pub(super) fn refunded(&self) -> u64 {
        self.refunds
            .iter()
            .filter(|r| r.settled)
            .map(|r| r.amount)
            .sum()
    }
}
