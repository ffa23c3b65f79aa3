//! The providers' daily trade statements, parsed exactly: WeChat Pay's trade bill (`wechat`) and
//! Alipay's trade detail zip (`alipay`), in the providers' published layouts (the fixtures in
//! `tests/fixtures/statements/` are written from them). A channel fetches the file
//! ([`crate::channel::StatementFile`]); [`parse`] checks and reads it.
//!
//! Pure functions of the downloaded bytes — no I/O, no clock, no config. Fetching the files and
//! comparing them with the ledger (issue 19) build on these; a parser either returns every row of
//! the day with totals that agree with the file's own summary, or an error saying which line is
//! wrong and how. Never a partial statement: a reconciliation that silently missed rows would
//! report payments as `missing_at_provider` that are not.
//!
//! Money is yuan with two decimals in the files and fen here, converted with integer arithmetic
//! (`parse_fen`); a fee is signed as payroute sees it — positive when the provider charges it on
//! a payment, negative when it gives it back on a refund — whatever sign the provider writes.

pub mod alipay;
pub mod compare;
pub mod wechat;

#[cfg(test)]
mod tests;

use crate::channel::StatementFile;
use crate::domain::parse_yuan;

/// Checks and parses a statement file as its channel fetched it: every row, or an error.
pub fn parse(file: &StatementFile) -> Result<Statement, StatementError> {
    match file {
        StatementFile::Wechat {
            bytes,
            gzip,
            sha1_hex,
        } => wechat::parse_tradebill(bytes, *gzip, sha1_hex),
        StatementFile::Alipay { bytes } => alipay::parse_trade_zip(bytes),
    }
}

/// What a statement row records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowKind {
    Payment,
    Refund,
}

/// One payment or refund of the day, as the provider booked it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementRow {
    pub kind: RowKind,
    /// The shop's order number (for a refund: the refunded payment's).
    pub out_trade_no: String,
    /// The provider's payment number (for a refund: the refunded payment's).
    pub provider_trade_no: String,
    /// Refunds: the refund number payroute sent (WeChat 商户退款单号, Alipay 退款批次号/请求号).
    pub out_refund_no: Option<String>,
    /// WeChat refunds: 微信退款单号. Alipay's statement has no refund number of its own.
    pub provider_refund_no: Option<String>,
    /// Fen: the order's amount on a payment, the refunded amount on a refund. Never negative.
    pub amount: u64,
    /// Fen, payroute's sign: + charged on a payment, − returned on a refund.
    pub fee: i64,
    /// The row's time as the file writes it (`2026-11-30 10:00:05`, China time): WeChat
    /// 交易时间, Alipay 完成时间.
    pub at: String,
    /// WeChat: the account the trade belongs to — 特约商户号 when set (partner mode), else 商户号.
    /// Alipay: none per row (the file's account is `Statement::account`).
    pub account: Option<String>,
}

/// A whole day's statement: its rows in file order and their totals, which the parser has
/// checked against the file's own summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Statement {
    pub rows: Vec<StatementRow>,
    /// Number of payment rows.
    pub payments: u64,
    /// Number of refund rows.
    pub refunds: u64,
    /// Σ `amount` of payment rows, fen.
    pub paid_total: u64,
    /// Σ `amount` of refund rows, fen.
    pub refunded_total: u64,
    /// Σ `fee` of all rows, fen, payroute's sign.
    pub fee_total: i64,
    /// Alipay: the account the file is for (`#账号：[2088…]`). WeChat: none (see each row).
    pub account: Option<String>,
}

impl Statement {
    /// Totals the rows. `end` is the line number to blame should a total not fit (only an
    /// absurd file could get there, but the parsers never panic on input).
    fn from_rows(
        rows: Vec<StatementRow>,
        account: Option<String>,
        end: usize,
    ) -> Result<Statement, StatementError> {
        let mut s = Statement {
            account,
            ..Statement::default()
        };
        let overflow = || StatementError::Malformed {
            line: end,
            why: "the day's totals overflow".into(),
        };
        for row in &rows {
            let (count, total) = match row.kind {
                RowKind::Payment => (&mut s.payments, &mut s.paid_total),
                RowKind::Refund => (&mut s.refunds, &mut s.refunded_total),
            };
            *count += 1;
            *total = total.checked_add(row.amount).ok_or_else(overflow)?;
            s.fee_total = s.fee_total.checked_add(row.fee).ok_or_else(overflow)?;
        }
        s.rows = rows;
        Ok(s)
    }
}

/// Why a statement could not be read. Every variant means: no rows at all.
#[derive(Debug, thiserror::Error)]
pub enum StatementError {
    /// WeChat: the downloaded bytes are not the file the (signed) bill answer described.
    #[error("the file's SHA-1 is {actual}, the provider stated {stated}")]
    HashMismatch { stated: String, actual: String },
    #[error("the gzip stream is corrupt or truncated: {0}")]
    Gzip(#[source] std::io::Error),
    #[error("the zip is corrupt or truncated: {0}")]
    Zip(#[source] zip::result::ZipError),
    /// Alipay: no (or more than one) `…_业务明细.csv` in the zip.
    #[error("the zip should hold exactly one `…_业务明细.csv`; it holds: {entries}")]
    MissingEntry { entries: String },
    #[error("the file is larger than {limit} bytes once unpacked")]
    TooLarge { limit: u64 },
    /// Lines count from 1 in the (unpacked) CSV file.
    #[error("line {line}: not valid {encoding}")]
    Encoding { line: usize, encoding: &'static str },
    #[error("line {line}: {why}")]
    Malformed { line: usize, why: String },
    /// The file's own summary disagrees with its rows: the file is incomplete or corrupt.
    #[error("the summary states {what} = {stated}, the rows add up to {counted}")]
    SummaryMismatch {
        what: &'static str,
        stated: String,
        counted: String,
    },
}

/// Unpacked statements beyond this are refused rather than read into memory: a day of a large
/// merchant is tens of megabytes, while a gzip or zip bomb would otherwise be inflated whole.
pub const MAX_UNPACKED_BYTES: u64 = 1 << 30;

/// A signed yuan amount as the statements write it (`19.99`, `-0.02`, `0.00`, `5`) to fen,
/// exactly: an optional `-` then what `domain::parse_yuan` accepts (at most two decimals, no
/// exponent, no `+`, no spaces).
pub fn parse_fen(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not a yuan amount with at most two decimals");
    let (negative, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let fen = parse_yuan(unsigned).map_err(|_| bad())?;
    let fen = i64::try_from(fen).map_err(|_| bad())?;
    Ok(if negative { -fen } else { fen })
}

/// A yuan string for messages, from fen of either sign: `-2` → `-0.02`.
fn yuan_signed(fen: i128) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let abs = fen.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// Column positions found by header name, so that a file whose columns moved is still read right
/// (or refused, when a column payroute reads is missing) rather than read from the wrong place.
struct Header {
    names: Vec<String>,
    line: usize,
}

impl Header {
    fn new<'a>(names: impl Iterator<Item = &'a str>, line: usize) -> Header {
        Header {
            names: names.map(|n| n.trim().to_string()).collect(),
            line,
        }
    }

    /// The position of `name`, which must appear exactly once.
    fn column(&self, name: &'static str) -> Result<Column, StatementError> {
        let mut found = self.names.iter().enumerate().filter(|(_, n)| *n == name);
        match (found.next(), found.next()) {
            (Some((i, _)), None) => Ok(Column { index: i, name }),
            (None, _) => Err(StatementError::Malformed {
                line: self.line,
                why: format!("the header has no column {name}"),
            }),
            (Some(_), Some(_)) => Err(StatementError::Malformed {
                line: self.line,
                why: format!("the header has column {name} more than once"),
            }),
        }
    }

    fn len(&self) -> usize {
        self.names.len()
    }
}

#[derive(Clone, Copy, Debug)]
struct Column {
    index: usize,
    name: &'static str,
}

/// One split line with the header's number of fields, read by column with errors naming the
/// line and the column.
struct Fields<'a> {
    fields: Vec<&'a str>,
    line: usize,
}

impl<'a> Fields<'a> {
    fn new(fields: Vec<&'a str>, header: &Header, line: usize) -> Result<Self, StatementError> {
        if fields.len() != header.len() {
            return Err(StatementError::Malformed {
                line,
                why: format!(
                    "{} fields where the header (line {}) has {}",
                    fields.len(),
                    header.line,
                    header.len()
                ),
            });
        }
        Ok(Fields { fields, line })
    }

    fn text(&self, c: Column) -> Result<&'a str, StatementError> {
        // The length was checked against the header, so this cannot miss; still no indexing.
        self.fields
            .get(c.index)
            .copied()
            .ok_or_else(|| self.malformed(format!("no field {}", c.name)))
    }

    /// A field that must not be empty (an order number, a time).
    fn required(&self, c: Column) -> Result<String, StatementError> {
        let t = self.text(c)?;
        if t.is_empty() {
            return Err(self.malformed(format!("{} is empty", c.name)));
        }
        Ok(t.to_string())
    }

    fn fen(&self, c: Column) -> Result<i64, StatementError> {
        parse_fen(self.text(c)?).map_err(|e| self.malformed(format!("{}: {e}", c.name)))
    }

    fn malformed(&self, why: String) -> StatementError {
        StatementError::Malformed {
            line: self.line,
            why,
        }
    }
}

/// Compares a stated total with the rows' sum; the first disagreement is the error.
fn check_total(what: &'static str, stated: i128, counted: i128) -> Result<(), StatementError> {
    if stated == counted {
        return Ok(());
    }
    Err(StatementError::SummaryMismatch {
        what,
        stated: yuan_signed(stated),
        counted: yuan_signed(counted),
    })
}

fn check_count(what: &'static str, stated: u64, counted: u64) -> Result<(), StatementError> {
    if stated == counted {
        return Ok(());
    }
    Err(StatementError::SummaryMismatch {
        what,
        stated: stated.to_string(),
        counted: counted.to_string(),
    })
}

/// A count as the summaries write it: digits only.
fn parse_count(s: &str) -> Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a count"));
    }
    s.parse().map_err(|_| format!("{s:?} is too large"))
}

/// Splits a text file into numbered lines (from 1), without the `\r` of `\r\n`.
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
}

/// Reads at most `MAX_UNPACKED_BYTES` from `r`; more is `TooLarge`.
fn read_capped(r: impl std::io::Read, out: &mut Vec<u8>) -> Result<(), std::io::Error> {
    use std::io::Read;
    r.take(MAX_UNPACKED_BYTES + 1).read_to_end(out)?;
    Ok(())
}

fn too_large(len: usize) -> Result<(), StatementError> {
    if len as u64 > MAX_UNPACKED_BYTES {
        return Err(StatementError::TooLarge {
            limit: MAX_UNPACKED_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn fen_is_exact_and_signed() {
        assert_eq!(parse_fen("19.99"), Ok(1999));
        assert_eq!(parse_fen("-0.02"), Ok(-2));
        assert_eq!(parse_fen("0.00"), Ok(0));
        assert_eq!(parse_fen("-0.00"), Ok(0));
        assert_eq!(parse_fen("5"), Ok(500));
        assert_eq!(parse_fen("5.5"), Ok(550));
        assert_eq!(parse_fen("-1234567.89"), Ok(-123_456_789));
    }

    #[test]
    fn fen_refuses_what_is_not_two_decimal_yuan() {
        for bad in [
            "19.999", "1e3", "-1e3", "+1.00", "-", "--1", "-+1", " 1.00", "1.00 ", "1,000.00", "",
            ".5", "5.", "0x10", "NaN", "inf", "1.0.0", "-.5", "٣",
        ] {
            assert!(parse_fen(bad).is_err(), "{bad:?} was accepted");
        }
        // Beyond i64 fen: refused, not wrapped.
        assert!(parse_fen("99999999999999999999").is_err());
        assert!(parse_fen("92233720368547758.08").is_err());
        assert_eq!(parse_fen("92233720368547758.07"), Ok(i64::MAX));
    }

    #[test]
    fn yuan_for_messages_keeps_the_sign() {
        assert_eq!(yuan_signed(-2), "-0.02");
        assert_eq!(yuan_signed(1999), "19.99");
        assert_eq!(yuan_signed(0), "0.00");
        assert_eq!(yuan_signed(-12_345), "-123.45");
    }

    #[test]
    fn totals_add_up_by_kind() {
        let row = |kind, amount, fee| StatementRow {
            kind,
            out_trade_no: "o".into(),
            provider_trade_no: "p".into(),
            out_refund_no: None,
            provider_refund_no: None,
            amount,
            fee,
            at: String::new(),
            account: None,
        };
        let s = Statement::from_rows(
            vec![
                row(RowKind::Payment, 1999, 8),
                row(RowKind::Payment, 8800, 33),
                row(RowKind::Refund, 500, -2),
            ],
            None,
            9,
        )
        .unwrap();
        assert_eq!((s.payments, s.refunds), (2, 1));
        assert_eq!(
            (s.paid_total, s.refunded_total, s.fee_total),
            (10_799, 500, 39)
        );
        let err = Statement::from_rows(
            vec![
                row(RowKind::Payment, u64::MAX, 0),
                row(RowKind::Payment, 1, 0),
            ],
            None,
            9,
        )
        .unwrap_err();
        assert!(
            matches!(err, StatementError::Malformed { line: 9, .. }),
            "{err}"
        );
    }

    #[test]
    fn header_columns_are_found_by_name_once() {
        let h = Header::new("a, b ,c,b".split(','), 1);
        assert_eq!(h.column("a").unwrap().index, 0);
        assert_eq!(h.column("c").unwrap().index, 2);
        assert!(h
            .column("b")
            .unwrap_err()
            .to_string()
            .contains("more than once"));
        assert!(h
            .column("d")
            .unwrap_err()
            .to_string()
            .contains("no column d"));
    }

    #[test]
    fn lines_are_numbered_from_one_without_cr() {
        let v: Vec<_> = numbered_lines("a\r\nb\nc\r\n").collect();
        assert_eq!(v, vec![(1, "a"), (2, "b"), (3, "c"), (4, "")]);
    }
}
