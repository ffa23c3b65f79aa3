//! The payment ledger as CSV or JSON lines, read page by page from the store: a merchant's
//! own payment data in a form ordinary tools read (`payroute payments export`,
//! `GET /admin/payments/export`).

use serde_json::json;

use super::view::{payment_json, rfc3339};
use crate::store::{PaymentFilter, PaymentRecord, Reports, StoreError};

/// Payments read from the store at a time.
const PAGE: u32 = 1_000;

/// The CSV columns, in order.
const CSV_HEADER: &str = "payment_id,merchant_id,shop_id,out_trade_no,amount,currency,method,status,channel,rule,provider_trade_no,refunded_amount,created_at,paid_at,late\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "csv" => Some(Format::Csv),
            "jsonl" => Some(Format::Jsonl),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Jsonl => "application/jsonl",
        }
    }
}

/// Which payments to export: created in `[since, until)`, of one merchant or all.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub merchant_id: Option<String>,
}

/// Writes the selected payments, newest first, to `out` one page at a time (memory stays one
/// page, whatever the ledger's size); at most `max_rows` of them. Returns how many.
pub async fn export(
    store: &dyn Reports,
    selection: &Selection,
    format: Format,
    max_rows: u64,
    out: &mut (dyn FnMut(&[u8]) -> std::io::Result<()> + Send),
) -> Result<u64, ExportError> {
    if format == Format::Csv {
        out(CSV_HEADER.as_bytes())?;
    }
    let mut filter = PaymentFilter {
        merchant_id: selection.merchant_id.clone(),
        since: selection.since,
        until: selection.until,
        ..PaymentFilter::default()
    };
    let mut written = 0;
    while written < max_rows {
        filter.limit = PAGE.min(u32::try_from(max_rows - written).unwrap_or(PAGE));
        let page = store.list_payments(&filter).await?;
        let Some(last) = page.last() else { break };
        filter.after = Some((last.created_at, last.payment_id.clone()));
        let mut buf = Vec::with_capacity(page.len() * 256);
        for p in &page {
            match format {
                Format::Csv => csv_row(p, &mut buf),
                Format::Jsonl => {
                    let mut v = payment_json(p);
                    v["shop_id"] = json!(p.shop_id);
                    buf.extend_from_slice(v.to_string().as_bytes());
                    buf.push(b'\n');
                }
            }
        }
        out(&buf)?;
        written += page.len() as u64;
        if page.len() < filter.limit as usize {
            break;
        }
    }
    Ok(written)
}

/// An RFC 3339 time as Unix ms (the export's `since` and `until`).
pub fn parse_time(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the export: {0}")]
    Write(#[from] std::io::Error),
}

fn csv_row(p: &PaymentRecord, buf: &mut Vec<u8>) {
    let fields = [
        p.payment_id.clone(),
        p.merchant_id.clone(),
        p.shop_id.clone(),
        p.out_trade_no.clone(),
        p.amount.to_string(),
        p.currency.clone(),
        p.method.as_str().to_string(),
        p.status.as_str().to_string(),
        p.channel.clone(),
        p.rule.clone(),
        p.provider_trade_no.clone().unwrap_or_default(),
        p.refunded_amount.to_string(),
        rfc3339(p.created_at),
        p.paid_at.map(rfc3339).unwrap_or_default(),
        p.late.to_string(),
    ];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        csv_field(f, buf);
    }
    buf.push(b'\n');
}

/// RFC 4180 quoting, and a leading `'` on a cell a spreadsheet would run as a formula
/// (OWASP's CSV-injection advice): ledger fields come from shops and providers.
fn csv_field(f: &str, buf: &mut Vec<u8>) {
    let formula = f.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quote = formula || f.contains([',', '"', '\n', '\r']);
    if quote {
        buf.push(b'"');
    }
    if formula {
        buf.push(b'\'');
    }
    for b in f.bytes() {
        if b == b'"' {
            buf.push(b'"');
        }
        buf.push(b);
    }
    if quote {
        buf.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        let cell = |s: &str| {
            let mut buf = Vec::new();
            super::csv_field(s, &mut buf);
            String::from_utf8(buf).unwrap()
        };
        assert_eq!(cell("ORDER-1"), "ORDER-1");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(cell("-1+1"), "\"'-1+1\"");
    }
}
