//! The WeChat Pay trade bill (`/v3/bill/tradebill`) of the sandbox's own orders, in the
//! layout of `/work/notes/statement-layout.md`: a header, one backticked row per payment
//! and per succeeded refund, the summary header and its backticked row; `\r\n` endings.

use time::Date;

use super::order::{Order, Refund};
use crate::domain::FeeRate;
use crate::sandbox::statement::{china_stamp, fee, field_text, on_day, rate_percent, signed_yuan};

const HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";
const SUMMARY_HEADER: &str =
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额";

/// `bill_type`: which rows the bill has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BillType {
    All,
    Success,
    Refund,
}

impl BillType {
    /// `ALL` (also when absent), `SUCCESS`, `REFUND`.
    pub(super) fn parse(text: Option<&str>) -> Option<BillType> {
        match text {
            None | Some("ALL") => Some(BillType::All),
            Some("SUCCESS") => Some(BillType::Success),
            Some("REFUND") => Some(BillType::Refund),
            Some(_) => None,
        }
    }
}

/// One detail row.
#[derive(Debug)]
pub(super) struct Row {
    /// China time `YYYY-MM-DD HH:MM:SS`: the payment's, or the refund's success.
    time: String,
    appid: String,
    mchid: String,
    /// `0` in direct mode.
    sub_mchid: String,
    transaction_id: String,
    out_trade_no: String,
    openid: String,
    trade_type: String,
    currency: String,
    /// The payment's amount (fen).
    paid: u64,
    /// `(refund_id, out_refund_no, amount)` of a refund row.
    refund: Option<(String, String, u64)>,
    description: String,
    attach: String,
    rate: FeeRate,
}

impl Row {
    /// Money in the summary's order: 应结订单金额, 退款金额, 手续费 (signed), 订单金额,
    /// 申请退款金额.
    fn money(&self) -> (u64, u64, i128, u64, u64) {
        match &self.refund {
            None => {
                let fee = i128::from(fee(self.paid, self.rate));
                (self.paid, 0, fee, self.paid, 0)
            }
            Some((_, _, amount)) => {
                let fee = i128::from(fee(*amount, self.rate));
                (0, *amount, -fee, 0, *amount)
            }
        }
    }

    fn line(&self) -> String {
        let (settle, refunded, fee, total, asked) = self.money();
        let y = |fen: u64| signed_yuan(i128::from(fen));
        let (state, refund_id, out_refund_no, refund_kind, refund_state) = match &self.refund {
            None => ("SUCCESS", "0", "0", "", ""),
            Some((id, no, _)) => ("REFUND", id.as_str(), no.as_str(), "ORIGINAL", "SUCCESS"),
        };
        let fields = [
            self.time.as_str(),
            &self.appid,
            &self.mchid,
            &self.sub_mchid,
            "",
            &self.transaction_id,
            &self.out_trade_no,
            &self.openid,
            &self.trade_type,
            state,
            "OTHERS",
            &self.currency,
            &y(settle),
            "0.00",
            refund_id,
            out_refund_no,
            &y(refunded),
            "0.00",
            refund_kind,
            refund_state,
            &self.description,
            &self.attach,
            &signed_yuan(fee),
            &rate_percent(self.rate),
            &y(total),
            &y(asked),
            "",
        ];
        ticked(&fields)
    }
}

/// Each field with its leading backtick, comma-separated.
fn ticked(fields: &[&str]) -> String {
    fields
        .iter()
        .map(|f| format!("`{f}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The rows `o` gives the bill of `day`: its payment if paid that day, and each refund
/// that succeeded that day.
pub(super) fn rows(o: &Order, day: Date, rate: FeeRate, kind: BillType) -> Vec<Row> {
    let (Some(transaction_id), Some(paid_at)) = (&o.transaction_id, &o.success_time) else {
        return Vec::new();
    };
    let req = &o.request;
    let text = |k: &str| field_text(req[k].as_str().unwrap_or_default());
    let payer = &req["payer"];
    let openid = ["openid", "sp_openid", "sub_openid"]
        .iter()
        .find_map(|k| payer[*k].as_str())
        .unwrap_or("oSandboxPayerTestOnly");
    let row = |time: String, refund: Option<&Refund>| Row {
        time,
        appid: text(if o.sub_mchid.is_some() {
            "sp_appid"
        } else {
            "appid"
        }),
        mchid: o.mchid.clone(),
        sub_mchid: o.sub_mchid.clone().unwrap_or_else(|| "0".into()),
        transaction_id: transaction_id.clone(),
        out_trade_no: o.out_trade_no.clone(),
        openid: field_text(openid),
        trade_type: o.trade_type.clone(),
        currency: o.currency.clone(),
        paid: o.amount,
        refund: refund.map(|r| (r.refund_id.clone(), r.out_refund_no.clone(), r.amount)),
        description: text("description"),
        attach: text("attach"),
        rate,
    };
    let mut out = Vec::new();
    if kind != BillType::Refund {
        if let Some(time) = china_stamp(paid_at).filter(|t| on_day(t, day)) {
            out.push(row(time, None));
        }
    }
    if kind != BillType::Success {
        for r in o.refunds.iter().filter(|r| r.status == "SUCCESS") {
            let time = r.success_time.as_deref().and_then(china_stamp);
            if let Some(time) = time.filter(|t| on_day(t, day)) {
                out.push(row(time, Some(r)));
            }
        }
    }
    out
}

/// The bill's text: rows in time order (payments before refunds at the same second), then
/// the summary of exactly those rows.
pub(super) fn bill(mut rows: Vec<Row>) -> String {
    rows.sort_by(|a, b| {
        (&a.time, a.refund.is_some(), &a.out_trade_no).cmp(&(
            &b.time,
            b.refund.is_some(),
            &b.out_trade_no,
        ))
    });
    let mut text = format!("{HEADER}\r\n");
    let (mut settle, mut refunded, mut fees, mut total, mut asked) = (0u128, 0u128, 0i128, 0, 0);
    for r in &rows {
        text.push_str(&r.line());
        text.push_str("\r\n");
        let (s, rf, f, t, a) = r.money();
        settle += u128::from(s);
        refunded += u128::from(rf);
        fees += f;
        total += u128::from(t);
        asked += u128::from(a);
    }
    let y = |fen: u128| signed_yuan(i128::try_from(fen).unwrap_or(i128::MAX));
    let count = rows.len().to_string();
    let summary = [
        count.as_str(),
        &y(settle),
        &y(refunded),
        "0.00",
        &signed_yuan(fees),
        &y(total),
        &y(asked),
    ];
    text.push_str(&format!("{SUMMARY_HEADER}\r\n{}\r\n", ticked(&summary)));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order(sub: Option<&str>) -> Order {
        let mut request = json!({
            "description": "Test mug", "out_trade_no": "ORDER1",
            "payer": { "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" },
        });
        match sub {
            None => request["appid"] = json!("wx2421b1c4370ec43b"),
            Some(_) => request["sp_appid"] = json!("wx8888888888888888"),
        }
        Order {
            mchid: "1900000109".into(),
            sub_mchid: sub.map(str::to_string),
            out_trade_no: "ORDER1".into(),
            trade_type: "NATIVE".into(),
            amount: 1999,
            currency: "CNY".into(),
            state: "REFUND".into(),
            prepay_id: "wx1".into(),
            transaction_id: Some("4200000001202611301234567890".into()),
            success_time: Some("2026-11-30T10:00:05+08:00".into()),
            request,
            refunds: vec![
                Refund {
                    out_refund_no: "ORDER1-r1".into(),
                    amount: 500,
                    refund_id: "50000000012026113000000001".into(),
                    status: "SUCCESS".into(),
                    notify_url: String::new(),
                    success_time: Some("2026-11-30T11:00:00+08:00".into()),
                },
                // Not succeeded: not in the bill.
                Refund {
                    out_refund_no: "ORDER1-r2".into(),
                    amount: 100,
                    refund_id: "50000000012026113000000002".into(),
                    status: "PROCESSING".into(),
                    notify_url: String::new(),
                    success_time: None,
                },
                // The next day's.
                Refund {
                    out_refund_no: "ORDER1-r3".into(),
                    amount: 100,
                    refund_id: "50000000012026113000000003".into(),
                    status: "SUCCESS".into(),
                    notify_url: String::new(),
                    success_time: Some("2026-12-01T00:00:00+08:00".into()),
                },
            ],
        }
    }

    fn day(s: &str) -> Date {
        Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).unwrap()
    }

    fn rate() -> FeeRate {
        FeeRate::parse("0.0038").unwrap()
    }

    /// The layout's own example, byte for byte.
    #[test]
    fn the_layouts_example_is_what_the_sandbox_writes() {
        let text = bill(rows(&order(None), day("2026-11-30"), rate(), BillType::All));
        let expected = [
            HEADER,
            "`2026-11-30 10:00:05,`wx2421b1c4370ec43b,`1900000109,`0,`,`4200000001202611301234567890,`ORDER1,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`NATIVE,`SUCCESS,`OTHERS,`CNY,`19.99,`0.00,`0,`0,`0.00,`0.00,`,`,`Test mug,`,`0.08,`0.38%,`19.99,`0.00,`",
            "`2026-11-30 11:00:00,`wx2421b1c4370ec43b,`1900000109,`0,`,`4200000001202611301234567890,`ORDER1,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`NATIVE,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`50000000012026113000000001,`ORDER1-r1,`5.00,`0.00,`ORIGINAL,`SUCCESS,`Test mug,`,`-0.02,`0.38%,`0.00,`5.00,`",
            SUMMARY_HEADER,
            "`2,`19.99,`5.00,`0.00,`0.06,`19.99,`5.00",
        ]
        .map(|l| format!("{l}\r\n"))
        .concat();
        assert_eq!(text, expected);
    }

    #[test]
    fn other_days_types_and_partner_mode() {
        // The next day: only the refund that succeeded then; its fee negative in the total.
        let text = bill(rows(&order(None), day("2026-12-01"), rate(), BillType::All));
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[1].contains("`ORDER1-r3,`1.00,"), "{}", lines[1]);
        assert_eq!(lines[3], "`1,`0.00,`1.00,`0.00,`0.00,`0.00,`1.00");
        // A day with nothing.
        let text = bill(rows(&order(None), day("2026-11-29"), rate(), BillType::All));
        assert_eq!(
            text,
            format!("{HEADER}\r\n{SUMMARY_HEADER}\r\n`0,`0.00,`0.00,`0.00,`0.00,`0.00,`0.00\r\n")
        );
        let d = day("2026-11-30");
        assert_eq!(rows(&order(None), d, rate(), BillType::Success).len(), 1);
        let refunds = rows(&order(None), d, rate(), BillType::Refund);
        assert_eq!(refunds.len(), 1);
        assert!(refunds[0].refund.is_some());
        // Partner: the sp_appid, the sp_mchid as 商户号, the sub_mchid as 特约商户号.
        let partner = rows(&order(Some("1900000209")), d, rate(), BillType::All);
        assert!(
            partner[0]
                .line()
                .starts_with("`2026-11-30 10:00:05,`wx8888888888888888,`1900000109,`1900000209,`,"),
            "{}",
            partner[0].line()
        );
        // Unpaid: nothing.
        let mut unpaid = order(None);
        unpaid.transaction_id = None;
        assert!(rows(&unpaid, d, rate(), BillType::All).is_empty());
        assert_eq!(BillType::parse(Some("FUND")), None);
        assert_eq!(BillType::parse(None), Some(BillType::All));
    }

    #[test]
    fn free_text_cannot_break_the_line() {
        let mut o = order(None);
        o.request["description"] = json!("mug, large\r\nblue");
        o.request["attach"] = json!("a,b");
        let r = rows(&o, day("2026-11-30"), rate(), BillType::Success);
        let line = r[0].line();
        assert_eq!(line.split(',').count(), 27, "{line}");
        assert!(line.contains("`mug， large  blue,`a，b,"), "{line}");
    }
}
