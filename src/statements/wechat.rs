//! WeChat Pay v3 trade bill (`/v3/bill/tradebill`, `bill_type=ALL`): a UTF-8 CSV, gzipped when
//! asked with `tar_type=GZIP`, whose SHA-1 the (signed) bill answer states.
//!
//! ```text
//! header                      交易时间,公众账号ID,商户号,…            (no backticks)
//! detail rows                 `2026-11-30 10:00:05,`wx…,`1900000109,…  (every field backticked)
//! summary header              总交易单数,应结订单总金额,…
//! summary row                 `3,`107.99,…
//! ```
//!
//! Choices where the layout is silent (each errs towards refusing a file over misreading it):
//! - The hash is compared case-insensitively (it is hex either way); it is checked before the
//!   bytes are even gunzipped, since nothing unverified should reach the parser.
//! - A leading UTF-8 BOM is skipped and blank lines (anywhere) are ignored: they hold no data.
//! - Fields are split on `` ,` `` — a comma followed by the next field's backtick — not on every
//!   comma, so a product name with a comma in it does not shift the columns.
//! - `SUCCESS` rows are payments and `REFUND` rows refunds; any other 交易状态 (e.g. `REVOKED`),
//!   and a refund row whose 退款状态 is not `SUCCESS`, is an error naming the line: a row payroute
//!   does not understand may carry money, so the day is refused rather than reconciled without it.
//! - A payment's `amount` is 订单金额 and a refund's is 申请退款金额: the amounts payroute's ledger
//!   holds (the layout makes 应结订单金额 and 退款金额 equal to them; all of them are checked
//!   against the summary).
//! - 货币种类 must be `CNY`: fen of another currency would compare wrongly with the ledger.
//! - The fee's sign is checked (≥ 0 on a payment, ≤ 0 on a refund, as the layout says): WeChat
//!   writes it with payroute's sign, so a wrong sign means a wrong file.

use super::{
    check_count, check_total, numbered_lines, parse_count, read_capped, too_large, Column, Fields,
    Header, RowKind, Statement, StatementError, StatementRow,
};

/// Parses a downloaded trade bill. `bytes` are the body exactly as downloaded (the gzip when
/// `gzip`), `sha1_hex` the bill answer's `hash_value`. Every error means no rows.
pub fn parse_tradebill(
    bytes: &[u8],
    gzip: bool,
    sha1_hex: &str,
) -> Result<Statement, StatementError> {
    let actual = crate::ids::hex(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes).as_ref(),
    );
    if !actual.eq_ignore_ascii_case(sha1_hex.trim()) {
        return Err(StatementError::HashMismatch {
            stated: sha1_hex.to_string(),
            actual,
        });
    }
    let unpacked;
    // Every member, as `gunzip` reads it: a file gzipped in parts is still the whole file.
    let csv = if gzip {
        let mut out = Vec::new();
        read_capped(flate2::read::MultiGzDecoder::new(bytes), &mut out)
            .map_err(StatementError::Gzip)?;
        too_large(out.len())?;
        unpacked = out;
        &unpacked[..]
    } else {
        bytes
    };
    let text = std::str::from_utf8(csv).map_err(|e| StatementError::Encoding {
        line: line_of_offset(csv, e.valid_up_to()),
        encoding: "UTF-8",
    })?;
    parse_text(text.strip_prefix('\u{feff}').unwrap_or(text))
}

/// The 1-based line holding byte `offset`.
fn line_of_offset(bytes: &[u8], offset: usize) -> usize {
    1 + bytes
        .get(..offset)
        .unwrap_or(bytes)
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// The detail columns payroute reads.
struct DetailColumns {
    time: Column,
    mchid: Column,
    sub_mchid: Column,
    transaction_id: Column,
    out_trade_no: Column,
    state: Column,
    currency: Column,
    settlement: Column,
    refund_id: Column,
    out_refund_no: Column,
    refund: Column,
    recharge_refund: Column,
    refund_status: Column,
    fee: Column,
    order: Column,
    requested_refund: Column,
}

impl DetailColumns {
    fn find(h: &Header) -> Result<DetailColumns, StatementError> {
        Ok(DetailColumns {
            time: h.column("交易时间")?,
            mchid: h.column("商户号")?,
            sub_mchid: h.column("特约商户号")?,
            transaction_id: h.column("微信订单号")?,
            out_trade_no: h.column("商户订单号")?,
            state: h.column("交易状态")?,
            currency: h.column("货币种类")?,
            settlement: h.column("应结订单金额")?,
            refund_id: h.column("微信退款单号")?,
            out_refund_no: h.column("商户退款单号")?,
            refund: h.column("退款金额")?,
            recharge_refund: h.column("充值券退款金额")?,
            refund_status: h.column("退款状态")?,
            fee: h.column("手续费")?,
            order: h.column("订单金额")?,
            requested_refund: h.column("申请退款金额")?,
        })
    }
}

/// Σ of each summed column, in fen; i128 so that no day's sum can overflow.
#[derive(Default)]
struct Sums {
    settlement: i128,
    refund: i128,
    recharge_refund: i128,
    fee: i128,
    order: i128,
    requested_refund: i128,
}

impl Sums {
    /// The summary's columns, each with the detail sum it must equal.
    fn by_summary_column(&self) -> [(&'static str, i128); 6] {
        [
            ("应结订单总金额", self.settlement),
            ("退款总金额", self.refund),
            ("充值券退款总金额", self.recharge_refund),
            ("手续费总金额", self.fee),
            ("订单总金额", self.order),
            ("申请退款总金额", self.requested_refund),
        ]
    }
}

const SUMMARY_COUNT: &str = "总交易单数";
const NOT_A_SUMMARY_HEADER: &str =
    "expected a detail row (starting with `) or the summary header (总交易单数,…)";

fn parse_text(text: &str) -> Result<Statement, StatementError> {
    let mut lines = numbered_lines(text).filter(|(_, l)| !l.trim().is_empty());
    let mut last = 0;
    let end = |last: usize, what: &str| StatementError::Malformed {
        line: last + 1,
        why: format!("the file ends before {what}"),
    };

    let (n, line) = lines.next().ok_or_else(|| end(last, "the header"))?;
    last = n;
    if line.starts_with('`') {
        return Err(StatementError::Malformed {
            line: n,
            why: "expected the header, found a detail row".into(),
        });
    }
    let header = Header::new(line.split(','), n);
    let cols = DetailColumns::find(&header)?;

    let mut rows = Vec::new();
    let mut sums = Sums::default();
    let summary_header = loop {
        let (n, line) = lines.next().ok_or_else(|| end(last, "the summary"))?;
        last = n;
        match line.strip_prefix('`') {
            Some(rest) => {
                let f = Fields::new(rest.split(",`").collect(), &header, n)?;
                rows.push(detail_row(&f, &cols, &mut sums)?);
            }
            None => break Header::new(line.split(','), n),
        }
    };
    let count_col =
        summary_header
            .column(SUMMARY_COUNT)
            .map_err(|_| StatementError::Malformed {
                line: summary_header.line,
                why: NOT_A_SUMMARY_HEADER.into(),
            })?;

    let (n, line) = lines.next().ok_or_else(|| end(last, "the summary row"))?;
    let rest = line
        .strip_prefix('`')
        .ok_or_else(|| StatementError::Malformed {
            line: n,
            why: "the summary row's fields should start with `".into(),
        })?;
    let summary = Fields::new(rest.split(",`").collect(), &summary_header, n)?;
    if let Some((n, _)) = lines.next() {
        return Err(StatementError::Malformed {
            line: n,
            why: "nothing should follow the summary row".into(),
        });
    }

    let stated_count = parse_count(summary.text(count_col)?)
        .map_err(|e| summary.malformed(format!("{SUMMARY_COUNT}: {e}")))?;
    check_count(SUMMARY_COUNT, stated_count, rows.len() as u64)?;
    for (name, counted) in sums.by_summary_column() {
        let stated = summary.fen(summary_header.column(name)?)?;
        check_total(name, stated.into(), counted)?;
    }
    Statement::from_rows(rows, None, n)
}

fn detail_row(
    f: &Fields<'_>,
    c: &DetailColumns,
    sums: &mut Sums,
) -> Result<StatementRow, StatementError> {
    let currency = f.text(c.currency)?;
    if currency != "CNY" {
        return Err(f.malformed(format!("货币种类 is {currency:?}, only CNY is read")));
    }
    let settlement = f.fen(c.settlement)?;
    let refund = f.fen(c.refund)?;
    let recharge_refund = f.fen(c.recharge_refund)?;
    let fee = f.fen(c.fee)?;
    let order = f.fen(c.order)?;
    let requested_refund = f.fen(c.requested_refund)?;
    sums.settlement += i128::from(settlement);
    sums.refund += i128::from(refund);
    sums.recharge_refund += i128::from(recharge_refund);
    sums.fee += i128::from(fee);
    sums.order += i128::from(order);
    sums.requested_refund += i128::from(requested_refund);

    let state = f.text(c.state)?;
    let (kind, amount, refund_ids) = match state {
        "SUCCESS" => {
            if fee < 0 {
                return Err(f.malformed(format!("a payment's 手续费 is negative ({fee} fen)")));
            }
            (RowKind::Payment, order, None)
        }
        "REFUND" => {
            let status = f.text(c.refund_status)?;
            if status != "SUCCESS" {
                return Err(f.malformed(format!(
                    "退款状态 {status:?}: only SUCCESS refunds are read"
                )));
            }
            if fee > 0 {
                return Err(f.malformed(format!("a refund's 手续费 is positive ({fee} fen)")));
            }
            let ids = (f.required(c.out_refund_no)?, f.required(c.refund_id)?);
            (RowKind::Refund, requested_refund, Some(ids))
        }
        other => {
            return Err(f.malformed(format!(
                "交易状态 {other:?}: only SUCCESS (payment) and REFUND rows are read"
            )))
        }
    };
    let amount = u64::try_from(amount)
        .map_err(|_| f.malformed(format!("the amount is negative ({amount} fen)")))?;
    // 特约商户号 is `0` in direct mode: the trade is then the 商户号's.
    let sub = f.text(c.sub_mchid)?;
    let account = if sub.is_empty() || sub == "0" {
        f.required(c.mchid)?
    } else {
        sub.to_string()
    };
    let (out_refund_no, provider_refund_no) = match refund_ids {
        Some((out, provider)) => (Some(out), Some(provider)),
        None => (None, None),
    };
    Ok(StatementRow {
        kind,
        out_trade_no: f.required(c.out_trade_no)?,
        provider_trade_no: f.required(c.transaction_id)?,
        out_refund_no,
        provider_refund_no,
        amount,
        fee,
        at: f.required(c.time)?,
        account: Some(account),
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    const HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";
    const PAY: &str = "`2026-11-30 10:00:05,`wx2421b1c4370ec43b,`1900000109,`0,`,`4200000001202611301234567890,`ORDER1,`oUpF8u,`NATIVE,`SUCCESS,`OTHERS,`CNY,`19.99,`0.00,`0,`0,`0.00,`0.00,`,`,`Test mug,`,`0.08,`0.38%,`19.99,`0.00,`";
    const REFUND: &str = "`2026-11-30 11:00:00,`wx2421b1c4370ec43b,`1900000109,`0,`,`4200000001202611301234567890,`ORDER1,`oUpF8u,`NATIVE,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`50000000012026113000000001,`ORDER1-r1,`5.00,`0.00,`ORIGINAL,`SUCCESS,`Test mug,`,`-0.02,`0.38%,`0.00,`5.00,`";
    const SUMMARY_HEADER: &str = "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额";
    const SUMMARY_ROW: &str = "`2,`19.99,`5.00,`0.00,`0.06,`19.99,`5.00";

    fn bill(lines: &[&str]) -> String {
        lines.iter().map(|l| format!("{l}\r\n")).collect()
    }

    fn sha1(bytes: &[u8]) -> String {
        crate::ids::hex(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes).as_ref(),
        )
    }

    fn parse(text: &str) -> Result<Statement, StatementError> {
        parse_tradebill(text.as_bytes(), false, &sha1(text.as_bytes()))
    }

    fn malformed_line(r: Result<Statement, StatementError>) -> (usize, String) {
        match r {
            Err(StatementError::Malformed { line, why }) => (line, why),
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn a_payment_and_its_refund() {
        let s = parse(&bill(&[HEADER, PAY, REFUND, SUMMARY_HEADER, SUMMARY_ROW])).unwrap();
        assert_eq!(s.rows.len(), 2);
        let (pay, refund) = (&s.rows[0], &s.rows[1]);
        assert_eq!(pay.kind, RowKind::Payment);
        assert_eq!((pay.amount, pay.fee), (1999, 8));
        assert_eq!(pay.out_trade_no, "ORDER1");
        assert_eq!(pay.provider_trade_no, "4200000001202611301234567890");
        assert_eq!(
            (
                pay.out_refund_no.as_deref(),
                pay.provider_refund_no.as_deref()
            ),
            (None, None)
        );
        assert_eq!(pay.at, "2026-11-30 10:00:05");
        assert_eq!(pay.account.as_deref(), Some("1900000109"));
        assert_eq!(refund.kind, RowKind::Refund);
        assert_eq!((refund.amount, refund.fee), (500, -2));
        assert_eq!(refund.out_trade_no, "ORDER1");
        assert_eq!(refund.out_refund_no.as_deref(), Some("ORDER1-r1"));
        assert_eq!(
            refund.provider_refund_no.as_deref(),
            Some("50000000012026113000000001")
        );
        assert_eq!((s.payments, s.refunds), (1, 1));
        assert_eq!(
            (s.paid_total, s.refunded_total, s.fee_total),
            (1999, 500, 6)
        );
        assert_eq!(s.account, None);
    }

    #[test]
    fn a_payment_amount_is_the_order_amount() {
        // A 0.01 coupon on a 20.00 order: 应结订单金额 19.99, 订单金额 20.00 (the ledger's).
        let pay = PAY.replacen("`19.99,`0.00,", "`19.99,`0.01,", 1).replacen(
            "`19.99,`0.00,`",
            "`20.00,`0.00,`",
            1,
        );
        assert_ne!(pay, PAY);
        let summary = "`1,`19.99,`0.00,`0.00,`0.08,`20.00,`0.00";
        let s = parse(&bill(&[HEADER, &pay, SUMMARY_HEADER, summary])).unwrap();
        assert_eq!(s.rows[0].amount, 2000);
        assert_eq!(s.paid_total, 2000);
    }

    #[test]
    fn columns_are_found_by_name_wherever_they_are() {
        // The same bill with its first two columns swapped in the header and in every row.
        let swap = |l: &str, sep: &str| {
            let mut parts: Vec<&str> = l.splitn(3, sep).collect();
            parts.swap(0, 1);
            parts.join(sep)
        };
        let header = swap(HEADER, ",");
        let swap_row = |r: &str| format!("`{}", swap(&r[1..], ",`"));
        let (pay, refund) = (swap_row(PAY), swap_row(REFUND));
        let s = parse(&bill(&[
            &header,
            &pay,
            &refund,
            SUMMARY_HEADER,
            SUMMARY_ROW,
        ]))
        .unwrap();
        assert_eq!(s.rows[0].at, "2026-11-30 10:00:05");
        assert_eq!(s.rows[1].at, "2026-11-30 11:00:00");
    }

    #[test]
    fn a_missing_column_is_named() {
        let header = HEADER.replace("手续费,", "服务费,");
        let (line, why) =
            malformed_line(parse(&bill(&[&header, PAY, SUMMARY_HEADER, SUMMARY_ROW])));
        assert_eq!(line, 1);
        assert!(why.contains("手续费"), "{why}");
    }

    #[test]
    fn the_wrong_hash_is_refused_before_anything_else() {
        let text = bill(&[HEADER, PAY, REFUND, SUMMARY_HEADER, SUMMARY_ROW]);
        let wrong = sha1(b"another file");
        match parse_tradebill(text.as_bytes(), false, &wrong) {
            Err(StatementError::HashMismatch { stated, actual }) => {
                assert_eq!(stated, wrong);
                assert_eq!(actual, sha1(text.as_bytes()));
            }
            other => panic!("expected HashMismatch, got {other:?}"),
        }
        // Even garbage is reported as a hash mismatch, not as what it would fail to parse as.
        let r = parse_tradebill(b"\xff\xfe not a bill", true, &wrong);
        assert!(
            matches!(r, Err(StatementError::HashMismatch { .. })),
            "{r:?}"
        );
        // Upper-case hex is the same hash.
        let upper = sha1(text.as_bytes()).to_uppercase();
        assert!(parse_tradebill(text.as_bytes(), false, &upper).is_ok());
    }

    #[test]
    fn other_states_are_refused_with_the_line() {
        let revoked = PAY.replace("`SUCCESS,", "`REVOKED,");
        let (line, why) = malformed_line(parse(&bill(&[
            HEADER,
            PAY,
            &revoked,
            SUMMARY_HEADER,
            SUMMARY_ROW,
        ])));
        assert_eq!(line, 3);
        assert!(why.contains("REVOKED"), "{why}");
        let processing = REFUND.replace("`ORIGINAL,`SUCCESS,", "`ORIGINAL,`PROCESSING,");
        let (line, why) = malformed_line(parse(&bill(&[
            HEADER,
            &processing,
            SUMMARY_HEADER,
            SUMMARY_ROW,
        ])));
        assert_eq!(line, 2);
        assert!(why.contains("PROCESSING"), "{why}");
    }

    #[test]
    fn malformed_amounts_name_the_line_and_column() {
        for bad in ["19.999", "1e3", "19,99", "", "-19.99x"] {
            let row = PAY.replace("`19.99,`0.00,`0,", &format!("`{bad},`0.00,`0,"));
            let (line, why) =
                malformed_line(parse(&bill(&[HEADER, &row, SUMMARY_HEADER, SUMMARY_ROW])));
            assert_eq!(line, 2, "{bad:?}");
            // A comma inside the field shifts nothing (fields split on ",`") but is no amount.
            assert!(why.contains("应结订单金额"), "{bad:?}: {why}");
        }
    }

    #[test]
    fn fee_signs_are_checked() {
        let pay = PAY.replace("`0.08,", "`-0.08,");
        let (line, why) =
            malformed_line(parse(&bill(&[HEADER, &pay, SUMMARY_HEADER, SUMMARY_ROW])));
        assert_eq!(line, 2);
        assert!(why.contains("negative"), "{why}");
        let refund = REFUND.replace("`-0.02,", "`0.02,");
        let (line, why) = malformed_line(parse(&bill(&[
            HEADER,
            &refund,
            SUMMARY_HEADER,
            SUMMARY_ROW,
        ])));
        assert_eq!(line, 2);
        assert!(why.contains("positive"), "{why}");
    }

    #[test]
    fn a_row_with_a_missing_field_is_refused() {
        let short = PAY.replacen("`wx2421b1c4370ec43b,", "", 1);
        let (line, why) =
            malformed_line(parse(&bill(&[HEADER, &short, SUMMARY_HEADER, SUMMARY_ROW])));
        assert_eq!(line, 2);
        assert!(why.contains("26 fields"), "{why}");
    }

    #[test]
    fn every_summary_total_is_checked() {
        let text = bill(&[HEADER, PAY, REFUND, SUMMARY_HEADER, SUMMARY_ROW]);
        let cases = [
            ("`2,`19.99", "`3,`19.99", "总交易单数", "3", "2"),
            (
                "`19.99,`5.00,`0.00,`0.06",
                "`19.98,`5.00,`0.00,`0.06",
                "应结订单总金额",
                "19.98",
                "19.99",
            ),
            (
                "`5.00,`0.00,`0.06",
                "`5.01,`0.00,`0.06",
                "退款总金额",
                "5.01",
                "5.00",
            ),
            (
                "`0.00,`0.06",
                "`0.01,`0.06",
                "充值券退款总金额",
                "0.01",
                "0.00",
            ),
            ("`0.06,", "`0.10,", "手续费总金额", "0.10", "0.06"),
            (
                "`0.06,`19.99,`5.00\r",
                "`0.06,`20.00,`5.00\r",
                "订单总金额",
                "20.00",
                "19.99",
            ),
            (
                "`19.99,`5.00\r",
                "`19.99,`-5.00\r",
                "申请退款总金额",
                "-5.00",
                "5.00",
            ),
        ];
        for (from, to, what, stated, counted) in cases {
            let (head, tail) = text.split_at(text.find(SUMMARY_HEADER).unwrap());
            let changed = format!("{head}{}", tail.replacen(from, to, 1));
            assert_ne!(changed, text, "{what}: the case changed nothing");
            match parse(&changed) {
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
    fn a_truncated_bill_is_refused() {
        let full = bill(&[HEADER, PAY, REFUND, SUMMARY_HEADER, SUMMARY_ROW]);
        // Cut after each line: no prefix of a bill is a bill.
        for lines in 0..5 {
            let cut: String = full.split_inclusive('\n').take(lines).collect();
            let r = parse(&cut);
            assert!(
                matches!(r, Err(StatementError::Malformed { .. })),
                "{lines} lines: {r:?}"
            );
        }
        // Cut mid-row: the row has too few fields.
        let mid = &full[..full.find("`0.38%").unwrap()];
        assert!(parse(mid).is_err());
    }

    #[test]
    fn the_summary_must_come_once_and_last() {
        let extra = bill(&[HEADER, PAY, REFUND, SUMMARY_HEADER, SUMMARY_ROW, PAY]);
        assert_eq!(malformed_line(parse(&extra)).0, 6);
        let not_a_summary = bill(&[HEADER, PAY, "something else", SUMMARY_ROW]);
        let (line, why) = malformed_line(parse(&not_a_summary));
        assert_eq!(line, 3);
        assert!(why.contains("summary header"), "{why}");
        let unticked = bill(&[
            HEADER,
            PAY,
            REFUND,
            SUMMARY_HEADER,
            &SUMMARY_ROW.replace('`', ""),
        ]);
        assert_eq!(malformed_line(parse(&unticked)).0, 5);
    }

    #[test]
    fn bom_and_blank_lines_are_ignored() {
        let text = format!(
            "\u{feff}{}\r\n\r\n",
            bill(&[HEADER, PAY, "", REFUND, SUMMARY_HEADER, SUMMARY_ROW]).trim_end()
        );
        assert_eq!(parse(&text).unwrap().rows.len(), 2);
    }

    #[test]
    fn invalid_utf8_names_its_line() {
        let mut bytes = bill(&[HEADER, PAY, SUMMARY_HEADER, SUMMARY_ROW]).into_bytes();
        let at = bytes.windows(8).position(|w| w == b"Test mug").unwrap();
        bytes[at] = 0xC3; // a lead byte with no continuation
        let r = parse_tradebill(&bytes, false, &sha1(&bytes));
        assert!(
            matches!(
                r,
                Err(StatementError::Encoding {
                    line: 2,
                    encoding: "UTF-8"
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn corrupt_gzip_is_refused() {
        let not_gzip = b"plainly not gzip";
        let r = parse_tradebill(not_gzip, true, &sha1(not_gzip));
        assert!(matches!(r, Err(StatementError::Gzip(_))), "{r:?}");
    }

    #[test]
    fn a_gzip_of_several_members_is_read_whole() {
        use std::io::Write;
        let text = bill(&[HEADER, PAY, REFUND, SUMMARY_HEADER, SUMMARY_ROW]);
        let (a, b) = text.split_at(text.find("`2026-11-30 11").unwrap());
        let mut gz = Vec::new();
        for part in [a, b] {
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(part.as_bytes()).unwrap();
            gz.extend(z.finish().unwrap());
        }
        let s = parse_tradebill(&gz, true, &sha1(&gz)).unwrap();
        assert_eq!(s.rows.len(), 2);
    }

    #[test]
    fn other_currencies_are_refused() {
        let usd = PAY.replace("`CNY,", "`USD,");
        let (_, why) = malformed_line(parse(&bill(&[HEADER, &usd, SUMMARY_HEADER, SUMMARY_ROW])));
        assert!(why.contains("USD"), "{why}");
    }
}
