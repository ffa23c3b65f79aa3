//! Alipay trade statement (`alipay.data.dataservice.bill.downloadurl.query`, `bill_type=trade`):
//! a zip `<pid>_<yyyymmdd>.csv.zip` of two GBK CSVs, of which payroute reads the detail one,
//! `<pid>_<yyyymmdd>_业务明细.csv`:
//!
//! ```text
//! #支付宝业务明细查询                                 comments, one of them #账号：[2088…]
//! 支付宝交易号,商户订单号,业务类型,…                    the header (no TABs)
//! 2026113022001400001234567890\t,ORDER2\t,交易\t,…     rows: every field followed by TAB
//! #交易合计：1笔，商家实收：19.99元，商家优惠：0.00元   the two totals, as comments
//! #退款合计：1笔，商家实收：-5.00元，商家优惠：0.00元
//! ```
//!
//! Choices where the layout is silent (each errs towards refusing a file over misreading it):
//! - Entry names are decoded as GBK (the layout: no UTF-8 flag); a name that only makes sense as
//!   UTF-8 is read as UTF-8 too, so that a zip written by a tool that flags UTF-8 still opens.
//!   Exactly one entry may end with `_业务明细.csv`; none or two is `MissingEntry`.
//! - Fields are split on TAB-comma (`\t,`), not on every comma, so a product name with a comma
//!   in it does not shift the columns; each field is then trimmed of TABs. One empty field past
//!   the header's count (a trailing `\t,` after 备注) is tolerated.
//! - Comments are skipped wherever they are; blank lines too. Of them, `#账号：[…]` gives
//!   `Statement::account`, and `#交易合计` / `#退款合计` must each appear exactly once: a file
//!   without them may be cut short, so it is refused.
//! - Each 合计 line's count, 商家实收 and 商家优惠 are checked against the rows of its kind.
//! - 业务类型 other than `交易` and `退款` is an error naming the line (a row payroute does not
//!   understand may carry money, so the day is refused rather than reconciled without it).
//! - A payment's `amount` is 订单金额 (what payroute's ledger holds; the layout makes 商家实收
//!   equal to it); a refund's is −商家实收, since its 订单金额 is the original order's.
//! - Signs are checked: a payment's 商家实收 ≥ 0 and 服务费 ≤ 0, a refund's 商家实收 ≤ 0 and
//!   服务费 ≥ 0. Alipay writes the fee from the merchant's side, so payroute's fee is −服务费.

use std::io::Cursor;

use encoding_rs::GBK;

use super::{
    check_count, check_total, parse_count, parse_fen, read_capped, too_large, Column, Fields,
    Header, RowKind, Statement, StatementError, StatementRow, MAX_UNPACKED_BYTES,
};

/// How the detail file's name ends (the summary's ends `_业务明细(汇总).csv`).
pub const DETAIL_SUFFIX: &str = "_业务明细.csv";

/// Parses the downloaded zip. Every error means no rows.
pub fn parse_trade_zip(bytes: &[u8]) -> Result<Statement, StatementError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(StatementError::Zip)?;
    let mut names = Vec::new();
    let mut details = Vec::new();
    for i in 0..archive.len() {
        // Raw: only the name is wanted here, nothing is inflated yet.
        let entry = archive.by_index_raw(i).map_err(StatementError::Zip)?;
        let name = entry_name(entry.name_raw());
        if !entry.is_dir() && name.ends_with(DETAIL_SUFFIX) {
            details.push(i);
        }
        names.push(name);
    }
    let [index] = details[..] else {
        return Err(StatementError::MissingEntry {
            entries: names.join(", "),
        });
    };
    let mut entry = archive.by_index(index).map_err(StatementError::Zip)?;
    if entry.size() > MAX_UNPACKED_BYTES {
        return Err(StatementError::TooLarge {
            limit: MAX_UNPACKED_BYTES,
        });
    }
    let mut csv = Vec::new();
    // Reading to the end checks the entry's CRC-32: a corrupt entry is an error, not rows.
    read_capped(&mut entry, &mut csv).map_err(|e| StatementError::Zip(e.into()))?;
    too_large(csv.len())?;
    parse_detail_csv(&csv)
}

/// An entry's name: GBK as Alipay writes it; UTF-8 when that is what it is.
fn entry_name(raw: &[u8]) -> String {
    if let Some(gbk) = GBK.decode_without_bom_handling_and_without_replacement(raw) {
        if gbk.ends_with(DETAIL_SUFFIX) {
            return gbk.into_owned();
        }
    }
    match std::str::from_utf8(raw) {
        Ok(utf8) => utf8.to_string(),
        // Only for the listing in an error message.
        Err(_) => GBK.decode_without_bom_handling(raw).0.into_owned(),
    }
}

/// The detail columns payroute reads.
struct DetailColumns {
    trade_no: Column,
    out_trade_no: Column,
    kind: Column,
    finished: Column,
    order: Column,
    received: Column,
    discount: Column,
    refund_no: Column,
    service_fee: Column,
}

impl DetailColumns {
    fn find(h: &Header) -> Result<DetailColumns, StatementError> {
        Ok(DetailColumns {
            trade_no: h.column("支付宝交易号")?,
            out_trade_no: h.column("商户订单号")?,
            kind: h.column("业务类型")?,
            finished: h.column("完成时间")?,
            order: h.column("订单金额（元）")?,
            received: h.column("商家实收（元）")?,
            discount: h.column("商家优惠（元）")?,
            refund_no: h.column("退款批次号/请求号")?,
            service_fee: h.column("服务费（元）")?,
        })
    }
}

/// A `#交易合计` / `#退款合计` line, or the same sums counted from the rows.
#[derive(Default)]
struct Total {
    count: u64,
    received: i128,
    discount: i128,
}

/// The names a mismatch reports, per 合计 line.
struct TotalNames {
    prefix: &'static str,
    count: &'static str,
    received: &'static str,
    discount: &'static str,
}

const PAYMENTS: TotalNames = TotalNames {
    prefix: "#交易合计：",
    count: "交易合计 笔数",
    received: "交易合计 商家实收",
    discount: "交易合计 商家优惠",
};
const REFUNDS: TotalNames = TotalNames {
    prefix: "#退款合计：",
    count: "退款合计 笔数",
    received: "退款合计 商家实收",
    discount: "退款合计 商家优惠",
};
const ACCOUNT_PREFIX: &str = "#账号：";

/// Parses the detail CSV (GBK bytes, as unzipped).
fn parse_detail_csv(bytes: &[u8]) -> Result<Statement, StatementError> {
    let mut header: Option<(Header, DetailColumns)> = None;
    let mut account = None;
    let mut stated = [None, None]; // payments, refunds
    let mut counted = [Total::default(), Total::default()];
    let mut rows = Vec::new();
    let mut last = 0;
    // GBK's trail bytes are 0x40–0xFE, never `\n`: splitting the raw bytes is safe.
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        last = n;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = GBK
            .decode_without_bom_handling_and_without_replacement(raw)
            .ok_or(StatementError::Encoding {
                line: n,
                encoding: "GBK",
            })?;
        let line = line.as_ref();
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with('#') {
            for (slot, names) in stated.iter_mut().zip([&PAYMENTS, &REFUNDS]) {
                if let Some(rest) = line.strip_prefix(names.prefix) {
                    if slot.is_some() {
                        return Err(malformed(n, format!("a second {} line", names.prefix)));
                    }
                    *slot = Some(parse_total(rest, n)?);
                }
            }
            if let Some(rest) = line.strip_prefix(ACCOUNT_PREFIX) {
                if account.is_some() {
                    return Err(malformed(n, format!("a second {ACCOUNT_PREFIX} line")));
                }
                let id = rest.trim().trim_start_matches('[').trim_end_matches(']');
                account = Some(id.to_string());
            }
            continue;
        }
        match &header {
            None => {
                let h = Header::new(line.split(','), n);
                let cols = DetailColumns::find(&h)?;
                header = Some((h, cols));
            }
            Some((h, cols)) => {
                let mut fields: Vec<&str> =
                    line.split("\t,").map(|f| f.trim_matches('\t')).collect();
                if fields.len() == h.len() + 1 && fields.last() == Some(&"") {
                    fields.pop();
                }
                let f = Fields::new(fields, h, n)?;
                rows.push(detail_row(&f, cols, &mut counted)?);
            }
        }
    }
    if header.is_none() {
        return Err(malformed(last, "the file has no header".into()));
    }
    for ((stated, counted), names) in stated.into_iter().zip(&counted).zip([&PAYMENTS, &REFUNDS]) {
        let stated = stated
            .ok_or_else(|| malformed(last, format!("the file has no {} line", names.prefix)))?;
        check_count(names.count, stated.count, counted.count)?;
        check_total(names.received, stated.received, counted.received)?;
        check_total(names.discount, stated.discount, counted.discount)?;
    }
    Statement::from_rows(rows, account, last)
}

fn malformed(line: usize, why: String) -> StatementError {
    StatementError::Malformed { line, why }
}

/// `1笔，商家实收：19.99元，商家优惠：0.00元`: the count first, then labelled amounts in any order
/// (labels payroute does not check are skipped).
fn parse_total(rest: &str, n: usize) -> Result<Total, StatementError> {
    let mut parts = rest.split('，');
    let count = parts
        .next()
        .and_then(|c| c.trim().strip_suffix('笔'))
        .ok_or_else(|| malformed(n, format!("{rest:?} does not start with a count (N笔)")))?;
    let count = parse_count(count).map_err(|e| malformed(n, e))?;
    let (mut received, mut discount) = (None, None);
    for part in parts {
        let Some((label, value)) = part.split_once('：') else {
            return Err(malformed(n, format!("{part:?} is not label：amount元")));
        };
        let slot = match label.trim() {
            "商家实收" => &mut received,
            "商家优惠" => &mut discount,
            _ => continue,
        };
        let value = value.trim().strip_suffix('元').unwrap_or(value);
        let fen = parse_fen(value).map_err(|e| malformed(n, format!("{label}: {e}")))?;
        *slot = Some(i128::from(fen));
    }
    let need = |v: Option<i128>, label: &str| {
        v.ok_or_else(|| malformed(n, format!("the line states no {label}")))
    };
    Ok(Total {
        count,
        received: need(received, "商家实收")?,
        discount: need(discount, "商家优惠")?,
    })
}

fn detail_row(
    f: &Fields<'_>,
    c: &DetailColumns,
    counted: &mut [Total; 2],
) -> Result<StatementRow, StatementError> {
    let order = f.fen(c.order)?;
    let received = f.fen(c.received)?;
    let discount = f.fen(c.discount)?;
    let service_fee = f.fen(c.service_fee)?;
    let kind = match f.text(c.kind)? {
        "交易" => RowKind::Payment,
        "退款" => RowKind::Refund,
        other => {
            return Err(f.malformed(format!(
                "业务类型 {other:?}: only 交易 (payment) and 退款 (refund) rows are read"
            )))
        }
    };
    let (amount, out_refund_no, total) = match kind {
        RowKind::Payment => {
            if received < 0 || order < 0 {
                return Err(f.malformed("a payment's amounts are negative".into()));
            }
            if service_fee > 0 {
                return Err(f.malformed(format!(
                    "a payment's 服务费 is positive ({service_fee} fen): Alipay writes a charge negative"
                )));
            }
            (order, None, &mut counted[0])
        }
        RowKind::Refund => {
            if received > 0 {
                return Err(f.malformed(format!(
                    "a refund's 商家实收 is positive ({received} fen): Alipay writes it negative"
                )));
            }
            if service_fee < 0 {
                return Err(f.malformed(format!(
                    "a refund's 服务费 is negative ({service_fee} fen): Alipay writes a return positive"
                )));
            }
            (-received, Some(f.required(c.refund_no)?), &mut counted[1])
        }
    };
    total.count += 1;
    total.received += i128::from(received);
    total.discount += i128::from(discount);
    Ok(StatementRow {
        kind,
        out_trade_no: f.required(c.out_trade_no)?,
        provider_trade_no: f.required(c.trade_no)?,
        out_refund_no,
        provider_refund_no: None,
        // Checked ≥ 0 above (a negation of i64::MIN cannot come from parse_fen).
        amount: u64::try_from(amount).map_err(|_| f.malformed("the amount is negative".into()))?,
        fee: -service_fee,
        at: f.required(c.finished)?,
        account: None,
    })
}

#[cfg(test)]
mod unit {
    use super::*;
    use std::io::Write;

    pub(crate) const HEADER: &str = "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注";
    const PAY: &str = "2026113022001400001234567890\t,ORDER2\t,交易\t,测试马克杯\t,2026-11-30 10:00:00\t,2026-11-30 10:00:05\t,\t,\t,\t,\t,buyer***@example.com\t,19.99\t,19.99\t,0.00\t,0.00\t,0.00\t,0.00\t,0.00\t,\t,0.00\t,0.00\t,\t,-0.12\t,0.00\t,";
    const REFUND: &str = "2026113022001400001234567890\t,ORDER2\t,退款\t,测试马克杯\t,2026-11-30 10:00:00\t,2026-11-30 11:00:00\t,\t,\t,\t,\t,buyer***@example.com\t,19.99\t,-5.00\t,0.00\t,0.00\t,0.00\t,0.00\t,0.00\t,\t,0.00\t,0.00\t,ORDER2-r1\t,0.03\t,0.00\t,";
    const PAY_TOTAL: &str = "#交易合计：1笔，商家实收：19.99元，商家优惠：0.00元";
    const REFUND_TOTAL: &str = "#退款合计：1笔，商家实收：-5.00元，商家优惠：0.00元";

    fn gbk(lines: &[&str]) -> Vec<u8> {
        let text: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
        let (bytes, _, unmappable) = GBK.encode(&text);
        assert!(!unmappable);
        bytes.into_owned()
    }

    fn full() -> Vec<&'static str> {
        vec![
            "#支付宝业务明细查询",
            "#账号：[2088000000001001]",
            HEADER,
            PAY,
            REFUND,
            "#-----------------------------------------业务明细列表结束------------------------------------",
            PAY_TOTAL,
            REFUND_TOTAL,
            "#导出时间：[2026年12月01日 09:00:00]",
        ]
    }

    fn with(replace: &str, by: &str) -> Vec<u8> {
        let lines: Vec<String> = full().iter().map(|l| l.replacen(replace, by, 1)).collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        gbk(&lines)
    }

    fn malformed_line(r: Result<Statement, StatementError>) -> (usize, String) {
        match r {
            Err(StatementError::Malformed { line, why }) => (line, why),
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    pub(crate) fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in entries {
            w.start_file(*name, options).unwrap();
            w.write_all(bytes).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn a_payment_and_its_refund_in_gbk() {
        let s = parse_detail_csv(&gbk(&full())).unwrap();
        assert_eq!(s.account.as_deref(), Some("2088000000001001"));
        assert_eq!(s.rows.len(), 2);
        let (pay, refund) = (&s.rows[0], &s.rows[1]);
        assert_eq!(pay.kind, RowKind::Payment);
        assert_eq!((pay.amount, pay.fee), (1999, 12));
        assert_eq!(pay.out_trade_no, "ORDER2");
        assert_eq!(pay.provider_trade_no, "2026113022001400001234567890");
        assert_eq!(pay.out_refund_no, None);
        assert_eq!(pay.at, "2026-11-30 10:00:05");
        assert_eq!(refund.kind, RowKind::Refund);
        assert_eq!((refund.amount, refund.fee), (500, -3));
        assert_eq!(refund.out_refund_no.as_deref(), Some("ORDER2-r1"));
        assert_eq!(
            (
                refund.provider_refund_no.as_deref(),
                refund.account.as_deref()
            ),
            (None, None)
        );
        assert_eq!(refund.at, "2026-11-30 11:00:00");
        assert_eq!(
            (
                s.payments,
                s.refunds,
                s.paid_total,
                s.refunded_total,
                s.fee_total
            ),
            (1, 1, 1999, 500, 9)
        );
    }

    #[test]
    fn a_payment_amount_is_the_order_amount() {
        // 商家优惠 0.01 on a 20.00 order: 商家实收 19.99. The ledger holds 20.00.
        let pay = PAY
            .replacen(",19.99\t,19.99\t,", ",20.00\t,19.99\t,", 1)
            .replacen(
                ",0.00\t,0.00\t,0.00\t,0.00\t,",
                ",0.00\t,0.00\t,0.00\t,0.01\t,",
                1,
            );
        assert_ne!(pay, PAY);
        let total = PAY_TOTAL.replace("商家优惠：0.00元", "商家优惠：0.01元");
        let lines = [HEADER, &pay, REFUND, &total, REFUND_TOTAL];
        let s = parse_detail_csv(&gbk(&lines)).unwrap();
        assert_eq!(s.rows[0].amount, 2000);
    }

    #[test]
    fn each_total_is_checked() {
        let cases = [
            (
                "#交易合计：1笔",
                "#交易合计：2笔",
                "交易合计 笔数",
                "2",
                "1",
            ),
            (
                "商家实收：19.99元",
                "商家实收：19.98元",
                "交易合计 商家实收",
                "19.98",
                "19.99",
            ),
            (
                "元，商家优惠：0.00元",
                "元，商家优惠：0.01元",
                "交易合计 商家优惠",
                "0.01",
                "0.00",
            ),
            (
                "#退款合计：1笔",
                "#退款合计：0笔",
                "退款合计 笔数",
                "0",
                "1",
            ),
            (
                "商家实收：-5.00元",
                "商家实收：5.00元",
                "退款合计 商家实收",
                "5.00",
                "-5.00",
            ),
        ];
        for (from, to, what, stated, counted) in cases {
            match parse_detail_csv(&with(from, to)) {
                Err(StatementError::SummaryMismatch {
                    what: w,
                    stated: s,
                    counted: c,
                }) => {
                    assert_eq!((w, s.as_str(), c.as_str()), (what, stated, counted));
                }
                other => panic!("{what}: expected SummaryMismatch, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_missing_total_line_is_refused() {
        let mut lines = full();
        lines.retain(|l| *l != REFUND_TOTAL);
        let (line, why) = malformed_line(parse_detail_csv(&gbk(&lines)));
        assert_eq!(line, 9); // the empty line after the last \r\n
        assert!(why.contains("#退款合计"), "{why}");
        let twice = [full(), vec![PAY_TOTAL]].concat();
        let (line, why) = malformed_line(parse_detail_csv(&gbk(&twice)));
        assert_eq!(line, 10);
        assert!(why.contains("second"), "{why}");
    }

    #[test]
    fn malformed_amounts_name_the_line_and_column() {
        for bad in ["19.999", "1e3", "１９.９９", ""] {
            let (line, why) = malformed_line(parse_detail_csv(&with(
                ",19.99\t,19.99\t,",
                &format!(",19.99\t,{bad}\t,"),
            )));
            assert_eq!(line, 4, "{bad:?}");
            assert!(why.contains("商家实收（元）"), "{bad:?}: {why}");
        }
        let (line, why) = malformed_line(parse_detail_csv(&with(
            "商家实收：19.99元",
            "商家实收：19.999元",
        )));
        assert_eq!(line, 7);
        assert!(why.contains("19.999"), "{why}");
    }

    #[test]
    fn signs_are_checked() {
        let (line, why) = malformed_line(parse_detail_csv(&with("\t,-0.12\t,", "\t,0.12\t,")));
        assert_eq!(line, 4);
        assert!(why.contains("服务费"), "{why}");
        let (line, why) = malformed_line(parse_detail_csv(&with("\t,0.03\t,", "\t,-0.03\t,")));
        assert_eq!(line, 5);
        assert!(why.contains("服务费"), "{why}");
        let (line, why) = malformed_line(parse_detail_csv(&with("\t,-5.00\t,", "\t,5.00\t,")));
        assert_eq!(line, 5);
        assert!(why.contains("商家实收"), "{why}");
    }

    #[test]
    fn other_business_types_are_refused() {
        let (line, why) = malformed_line(parse_detail_csv(&with("\t,退款\t,", "\t,冻结\t,")));
        assert_eq!(line, 5);
        assert!(why.contains("冻结"), "{why}");
    }

    #[test]
    fn a_refund_needs_its_refund_number() {
        let (line, why) = malformed_line(parse_detail_csv(&with("\t,ORDER2-r1\t,", "\t,\t,")));
        assert_eq!(line, 5);
        assert!(why.contains("退款批次号/请求号"), "{why}");
    }

    #[test]
    fn commas_inside_a_field_shift_nothing() {
        let s = parse_detail_csv(&with("测试马克杯", "杯子,大号")).unwrap();
        assert_eq!(s.rows[0].amount, 1999);
        // Without the TABs the row is a single field: refused, not misread.
        let (line, why) = malformed_line(parse_detail_csv(&with(PAY, &PAY.replace('\t', ""))));
        assert_eq!(line, 4);
        assert!(why.contains("fields"), "{why}");
    }

    #[test]
    fn not_gbk_names_its_line() {
        let mut bytes = gbk(&full());
        let at = bytes.windows(6).position(|w| w == b"ORDER2").unwrap();
        bytes[at] = 0xFF; // never a GBK byte
        let r = parse_detail_csv(&bytes);
        assert!(
            matches!(
                r,
                Err(StatementError::Encoding {
                    line: 4,
                    encoding: "GBK"
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn an_empty_day() {
        let lines = [
            "#账号：[2088000000001001]",
            HEADER,
            "#交易合计：0笔，商家实收：0.00元，商家优惠：0.00元",
            "#退款合计：0笔，商家实收：0.00元，商家优惠：0.00元",
        ];
        let s = parse_detail_csv(&gbk(&lines)).unwrap();
        assert_eq!(s.rows, vec![]);
        assert_eq!((s.payments, s.refunds, s.fee_total), (0, 0, 0));
        // No header at all: refused.
        let (_, why) = malformed_line(parse_detail_csv(&gbk(&[lines[0], lines[2], lines[3]])));
        assert!(why.contains("no header"), "{why}");
    }

    #[test]
    fn no_prefix_of_the_file_is_a_partial_statement() {
        let bytes = gbk(&full());
        let whole = parse_detail_csv(&bytes).unwrap();
        for cut in 0..bytes.len() {
            if let Ok(s) = parse_detail_csv(&bytes[..cut]) {
                assert_eq!(s, whole, "cut at {cut} bytes");
            }
        }
    }

    #[test]
    fn the_detail_entry_is_found_by_name() {
        let csv = gbk(&full());
        let summary = gbk(&["#支付宝业务汇总查询"]);
        // UTF-8-flagged names (what ZipWriter writes) open too; the 汇总 file is not taken.
        let z = zip_of(&[
            ("2088000000001001_20261130_业务明细(汇总).csv", &summary),
            ("2088000000001001_20261130_业务明细.csv", &csv),
        ]);
        assert_eq!(parse_trade_zip(&z).unwrap().rows.len(), 2);
        let only_summary = zip_of(&[("2088000000001001_20261130_业务明细(汇总).csv", &summary)]);
        match parse_trade_zip(&only_summary) {
            Err(StatementError::MissingEntry { entries }) => {
                assert_eq!(entries, "2088000000001001_20261130_业务明细(汇总).csv")
            }
            other => panic!("expected MissingEntry, got {other:?}"),
        }
        let two = zip_of(&[("a_业务明细.csv", &csv), ("b_业务明细.csv", &csv)]);
        assert!(matches!(
            parse_trade_zip(&two),
            Err(StatementError::MissingEntry { .. })
        ));
    }

    #[test]
    fn gbk_entry_names_are_decoded() {
        let name = "2088000000001001_20261130_业务明细.csv";
        let (raw, _, _) = GBK.encode(name);
        assert_eq!(entry_name(&raw), name);
        assert_eq!(entry_name(name.as_bytes()), name);
        assert_eq!(entry_name(b"plain.csv"), "plain.csv");
    }

    #[test]
    fn not_a_zip_is_refused() {
        let r = parse_trade_zip(b"PK\x03\x04 but nothing more");
        assert!(matches!(r, Err(StatementError::Zip(_))), "{r:?}");
        assert!(matches!(parse_trade_zip(b""), Err(StatementError::Zip(_))));
    }
}
