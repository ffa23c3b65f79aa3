//! The Alipay trade statement (`alipay.data.dataservice.bill.downloadurl.query`,
//! `bill_type=trade`) of the sandbox's own trades, in the layout of
//! `/work/notes/statement-layout.md`: a zip `<pid>_<yyyymmdd>.csv.zip` of two GBK files —
//! `<pid>_<yyyymmdd>_业务明细.csv` (comment lines, a header, one `value\t,` row per payment
//! and per settled refund, the two 合计 lines) and `<pid>_<yyyymmdd>_业务明细(汇总).csv`.

use time::Date;

use super::order::{AliOrder, AliRefund};
use crate::domain::FeeRate;
use crate::sandbox::statement::{
    chinese_day_start, chinese_now, compact_day, fee, field_text, gbk, on_day, signed_yuan,
    zip_raw_names, ZipError,
};

const HEADER: &str = "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注";
const LIST_START: &str =
    "#-----------------------------------------业务明细列表----------------------------------------";
const LIST_END: &str =
    "#-----------------------------------------业务明细列表结束------------------------------------";
const SUMMARY_HEADER: &str = "门店编号,门店名称,交易订单总笔数,退款订单总笔数,订单金额（元）,商家实收（元）,支付宝优惠（元）,商家优惠（元）,卡消费金额（元）,服务费（元）,分润（元）,实收净额（元）";
const SUMMARY_START: &str =
    "#-----------------------------------------业务汇总列表----------------------------------------";
const SUMMARY_END: &str =
    "#-----------------------------------------业务汇总列表结束------------------------------------";
/// The payer as the sandbox's answers show it (TEST-ONLY, made up).
const BUYER: &str = "san***@sandbox.example";

/// One detail row.
#[derive(Debug)]
pub(super) struct Row {
    trade_no: String,
    out_trade_no: String,
    subject: String,
    /// The trade's creation, China time.
    created: String,
    /// The payment's, or the refund's settlement, China time.
    done: String,
    /// The trade's amount (fen).
    amount: u64,
    /// `(out_request_no, amount)` of a refund row.
    refund: Option<(String, u64)>,
    rate: FeeRate,
}

impl Row {
    /// 商家实收 (signed fen) and 服务费 (signed fen: a charge negative, a return positive).
    fn money(&self) -> (i128, i128) {
        match &self.refund {
            None => (
                i128::from(self.amount),
                -i128::from(fee(self.amount, self.rate)),
            ),
            Some((_, amount)) => (-i128::from(*amount), i128::from(fee(*amount, self.rate))),
        }
    }

    fn line(&self) -> String {
        let (received, service) = self.money();
        let (kind, request_no) = match &self.refund {
            None => ("交易", ""),
            Some((no, _)) => ("退款", no.as_str()),
        };
        let zero = "0.00";
        let fields = [
            self.trade_no.as_str(),
            &self.out_trade_no,
            kind,
            &self.subject,
            &self.created,
            &self.done,
            "",
            "",
            "",
            "",
            BUYER,
            &signed_yuan(i128::from(self.amount)),
            &signed_yuan(received),
            zero,
            zero,
            zero,
            zero,
            zero,
            "",
            zero,
            zero,
            request_no,
            &signed_yuan(service),
            zero,
        ];
        // Each field but the last (备注, empty) followed by a tab, then the comma.
        fields.iter().map(|f| format!("{f}\t,")).collect()
    }
}

/// The rows `o` gives the statement of `day`: its payment if paid that day, and each refund
/// settled that day.
pub(super) fn rows(o: &AliOrder, day: Date, rate: FeeRate) -> Vec<Row> {
    let (Some(trade_no), Some(paid_at)) = (&o.trade_no, &o.send_pay_date) else {
        return Vec::new();
    };
    let row = |done: &str, refund: Option<&AliRefund>| Row {
        trade_no: trade_no.clone(),
        out_trade_no: o.out_trade_no.clone(),
        subject: field_text(&o.subject),
        created: o.gmt_create.clone(),
        done: done.to_string(),
        amount: o.amount,
        refund: refund.map(|r| (r.out_request_no.clone(), r.amount)),
        rate,
    };
    let mut out = Vec::new();
    if on_day(paid_at, day) {
        out.push(row(paid_at, None));
    }
    for r in o.refunds.iter().filter(|r| r.settled) {
        if let Some(at) = r.gmt_refund.as_deref().filter(|t| on_day(t, day)) {
            out.push(row(at, Some(r)));
        }
    }
    out
}

/// The two files' text: the detail and the summary (汇总), rows in time order.
pub(super) fn files(pid: &str, day: Date, mut rows: Vec<Row>) -> (String, String) {
    rows.sort_by(|a, b| {
        (&a.done, a.refund.is_some(), &a.out_trade_no).cmp(&(
            &b.done,
            b.refund.is_some(),
            &b.out_trade_no,
        ))
    });
    let next = day.next_day().unwrap_or(day);
    let span = format!(
        "#起始日期：[{}]   终止日期：[{}]",
        chinese_day_start(day),
        chinese_day_start(next)
    );
    let exported = format!("#导出时间：[{}]", chinese_now());
    let (mut paid_n, mut paid_sum, mut refund_n, mut refund_sum) = (0u64, 0i128, 0u64, 0i128);
    let (mut order_sum, mut service_sum) = (0i128, 0i128);
    let mut detail = vec![
        "#支付宝业务明细查询".to_string(),
        format!("#账号：[{pid}]"),
        span.clone(),
        LIST_START.to_string(),
        HEADER.to_string(),
    ];
    for r in &rows {
        detail.push(r.line());
        let (received, service) = r.money();
        service_sum += service;
        if r.refund.is_some() {
            refund_n += 1;
            refund_sum += received;
        } else {
            paid_n += 1;
            paid_sum += received;
            order_sum += i128::from(r.amount);
        }
    }
    detail.extend([
        LIST_END.to_string(),
        format!(
            "#交易合计：{paid_n}笔，商家实收：{}元，商家优惠：0.00元",
            signed_yuan(paid_sum)
        ),
        format!(
            "#退款合计：{refund_n}笔，商家实收：{}元，商家优惠：0.00元",
            signed_yuan(refund_sum)
        ),
        exported.clone(),
    ]);
    let net = paid_sum + refund_sum;
    let y = signed_yuan;
    let summary_row = [
        "合计".to_string(),
        String::new(),
        paid_n.to_string(),
        refund_n.to_string(),
        y(order_sum),
        y(net),
        y(0),
        y(0),
        y(0),
        y(service_sum),
        y(0),
        y(net + service_sum),
    ];
    let summary = vec![
        "#支付宝业务汇总查询".to_string(),
        format!("#账号：[{pid}]"),
        span,
        SUMMARY_START.to_string(),
        SUMMARY_HEADER.to_string(),
        summary_row
            .iter()
            .map(|f| format!("{f}\t"))
            .collect::<Vec<_>>()
            .join(","),
        SUMMARY_END.to_string(),
        exported,
    ];
    let crlf = |lines: Vec<String>| lines.iter().map(|l| format!("{l}\r\n")).collect();
    (crlf(detail), crlf(summary))
}

/// The zip's name, `<pid>_<yyyymmdd>.csv.zip`.
pub(super) fn zip_name(pid: &str, day: Date) -> String {
    format!("{pid}_{}.csv.zip", compact_day(day))
}

/// The statement zip: both files GBK-encoded, under GBK names.
pub(super) fn zip(pid: &str, day: Date, rows: Vec<Row>) -> Result<Vec<u8>, ZipError> {
    let (detail, summary) = files(pid, day, rows);
    let stem = format!("{pid}_{}", compact_day(day));
    zip_raw_names(&[
        (gbk(&format!("{stem}_业务明细.csv")), gbk(&detail)),
        (gbk(&format!("{stem}_业务明细(汇总).csv")), gbk(&summary)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Read;

    fn order() -> AliOrder {
        AliOrder {
            app_id: "2021000000000001".into(),
            app_auth_token: Some("tok".into()),
            seller_id: "2088000000001001".into(),
            out_trade_no: "ORDER2".into(),
            method: "alipay.trade.precreate".into(),
            amount: 1999,
            subject: "Test mug".into(),
            state: "TRADE_SUCCESS".into(),
            trade_no: Some("2026113022001400001234567890".into()),
            gmt_create: "2026-11-30 10:00:00".into(),
            send_pay_date: Some("2026-11-30 10:00:05".into()),
            request: json!({}),
            refunds: vec![
                AliRefund {
                    out_request_no: "ORDER2-r1".into(),
                    amount: 500,
                    settled: true,
                    gmt_refund: Some("2026-11-30 11:00:00".into()),
                },
                // Still processing: not in.
                AliRefund {
                    out_request_no: "ORDER2-r2".into(),
                    amount: 100,
                    settled: false,
                    gmt_refund: None,
                },
            ],
        }
    }

    fn day(s: &str) -> Date {
        Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).unwrap()
    }

    fn rate() -> FeeRate {
        FeeRate::parse("0.006").unwrap()
    }

    /// The layout's own example (but the payer and the export time), byte for byte.
    #[test]
    fn the_layouts_example_is_what_the_sandbox_writes() {
        let d = day("2026-11-30");
        let (detail, summary) = files("2088000000001001", d, rows(&order(), d, rate()));
        let lines: Vec<&str> = detail.split("\r\n").collect();
        let expected = [
            "#支付宝业务明细查询",
            "#账号：[2088000000001001]",
            "#起始日期：[2026年11月30日 00:00:00]   终止日期：[2026年12月01日 00:00:00]",
            LIST_START,
            HEADER,
            "2026113022001400001234567890\t,ORDER2\t,交易\t,Test mug\t,2026-11-30 10:00:00\t,2026-11-30 10:00:05\t,\t,\t,\t,\t,san***@sandbox.example\t,19.99\t,19.99\t,0.00\t,0.00\t,0.00\t,0.00\t,0.00\t,\t,0.00\t,0.00\t,\t,-0.12\t,0.00\t,",
            "2026113022001400001234567890\t,ORDER2\t,退款\t,Test mug\t,2026-11-30 10:00:00\t,2026-11-30 11:00:00\t,\t,\t,\t,\t,san***@sandbox.example\t,19.99\t,-5.00\t,0.00\t,0.00\t,0.00\t,0.00\t,0.00\t,\t,0.00\t,0.00\t,ORDER2-r1\t,0.03\t,0.00\t,",
            LIST_END,
            "#交易合计：1笔，商家实收：19.99元，商家优惠：0.00元",
            "#退款合计：1笔，商家实收：-5.00元，商家优惠：0.00元",
        ];
        assert_eq!(lines[..expected.len()], expected[..], "{detail}");
        assert!(lines[10].starts_with("#导出时间：["), "{}", lines[10]);
        assert_eq!((lines.len(), lines[11]), (12, ""), "ends with CRLF");
        // 25 columns, as the header.
        assert_eq!(lines[5].split(',').count(), HEADER.split(',').count());
        // Summary: net 14.99, fees -0.12 + 0.03, net of fees 14.90.
        assert!(
            summary.contains(
                "合计\t,\t,1\t,1\t,19.99\t,14.99\t,0.00\t,0.00\t,0.00\t,-0.09\t,0.00\t,14.90\t\r\n"
            ),
            "{summary}"
        );
    }

    #[test]
    fn an_empty_day_and_the_next_day() {
        let (detail, _) = files("2088", day("2026-11-29"), Vec::new());
        assert!(
            detail.contains("#交易合计：0笔，商家实收：0.00元"),
            "{detail}"
        );
        assert!(
            detail.contains("#退款合计：0笔，商家实收：0.00元"),
            "{detail}"
        );
        assert!(rows(&order(), day("2026-12-01"), rate()).is_empty());
        let mut unpaid = order();
        unpaid.trade_no = None;
        assert!(rows(&unpaid, day("2026-11-30"), rate()).is_empty());
    }

    #[test]
    fn the_zip_holds_both_files_in_gbk() {
        let d = day("2026-11-30");
        let bytes = zip("2088000000001001", d, rows(&order(), d, rate())).unwrap();
        assert_eq!(
            zip_name("2088000000001001", d),
            "2088000000001001_20261130.csv.zip"
        );
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let mut names = Vec::new();
        for i in 0..archive.len() {
            let mut f = archive.by_index(i).unwrap();
            let (name, _, bad) = encoding_rs::GBK.decode(f.name_raw());
            assert!(!bad);
            names.push(name.into_owned());
            let mut raw = Vec::new();
            f.read_to_end(&mut raw).unwrap();
            let (text, _, bad) = encoding_rs::GBK.decode(&raw);
            assert!(!bad);
            assert!(text.contains("#账号：[2088000000001001]"), "{text}");
        }
        assert_eq!(
            names,
            [
                "2088000000001001_20261130_业务明细.csv",
                "2088000000001001_20261130_业务明细(汇总).csv"
            ]
        );
    }
}
