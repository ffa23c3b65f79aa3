//! One account's statement of one China day against the ledger's view of that account and day
//! (issue 19, item 2): which rows agree, which do not and how, and the fee the provider actually
//! charged on every payment that agrees.
//!
//! A pure function of what the caller gathered — [`compare`] reads slices, never the store, the
//! clock or the config — so that a day can be compared again and give the same answer, and so
//! that every rule below is tested without a database. Money stays integer fen throughout.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use super::{RowKind, Statement, StatementRow};
use crate::domain::{PaymentStatus, RefundStatus};
use crate::store::{PaymentRecord, RefundRecord};

#[cfg(test)]
mod tests;

/// How a statement and the ledger disagree (DESIGN §13, "Statements"; the metric label
/// `statement_discrepancies{kind}`). Ordered as listed: the order discrepancies are reported in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DiscrepancyKind {
    /// The provider booked a payment payroute does not hold as `succeeded` (pending, unknown,
    /// closed, failed, or no such order): settled by querying the provider.
    MissingLocally,
    /// payroute holds a payment `succeeded` on the day that the provider did not book.
    MissingAtProvider,
    /// Both hold the payment, for different amounts — or the provider booked it more than once.
    AmountMismatch,
    /// The provider booked a refund payroute does not hold as `succeeded`.
    RefundMissingLocally,
    /// Both hold the refund, for different amounts; or the provider booked it more than once;
    /// or payroute holds a refund `succeeded` on the day that the provider did not book.
    RefundMismatch,
}

impl DiscrepancyKind {
    pub const ALL: [DiscrepancyKind; 5] = [
        DiscrepancyKind::MissingLocally,
        DiscrepancyKind::MissingAtProvider,
        DiscrepancyKind::AmountMismatch,
        DiscrepancyKind::RefundMissingLocally,
        DiscrepancyKind::RefundMismatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DiscrepancyKind::MissingLocally => "missing_locally",
            DiscrepancyKind::MissingAtProvider => "missing_at_provider",
            DiscrepancyKind::AmountMismatch => "amount_mismatch",
            DiscrepancyKind::RefundMissingLocally => "refund_missing_locally",
            DiscrepancyKind::RefundMismatch => "refund_mismatch",
        }
    }

    pub fn parse(s: &str) -> Option<DiscrepancyKind> {
        DiscrepancyKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for DiscrepancyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One disagreement, with what each side says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discrepancy {
    pub kind: DiscrepancyKind,
    pub out_trade_no: String,
    /// Refund kinds: the refund's number (`None` only for a provider refund row without one).
    pub out_refund_no: Option<String>,
    /// The ledger payment concerned, when the ledger has one.
    pub payment_id: Option<String>,
    /// Fen, what the provider booked (`None`: nothing). For a payment or refund booked more
    /// than once: the sum of its rows.
    pub stated: Option<u64>,
    /// Fen, what the ledger holds (`None`: nothing), whatever its status.
    pub recorded: Option<u64>,
    /// The provider's row, for ops (`None` when the provider has no row).
    pub row: Option<StatementRow>,
}

/// The fee the provider charged on a matched payment (its payment row's fee), fen, payroute's
/// sign (+ charged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActualFee {
    pub payment_id: String,
    pub fee: i64,
}

/// The fee the provider gave back on a matched refund (its refund row's fee), fen, payroute's
/// sign (− returned; zero when the provider returns none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundFee {
    pub payment_id: String,
    pub refund_id: String,
    pub fee: i64,
}

/// The outcome of [`compare`], in a deterministic order so that it can be stored and compared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// The statement's rows (payments and refunds).
    pub rows: usize,
    /// Rows that agree with the ledger. Always `rows` = `matched` + the discrepancies that
    /// carry a row.
    pub matched: usize,
    /// Sorted by kind (in [`DiscrepancyKind::ALL`] order), then `out_trade_no`, then
    /// `out_refund_no` (then the remaining fields, so that the order is total).
    pub discrepancies: Vec<Discrepancy>,
    /// One per matched payment, sorted by `payment_id`.
    pub fees: Vec<ActualFee>,
    /// One per matched refund, sorted by `payment_id` then `refund_id`.
    pub refund_fees: Vec<RefundFee>,
}

/// The ledger's view of one account for one China day, as the caller gathered it.
#[derive(Clone, Debug)]
pub struct LedgerDay<'a> {
    /// The account's payments whose `paid_at` falls in `day`, and those the statement names
    /// (looked up by `out_trade_no` within the account). Overlap is fine: a record given twice
    /// counts once (by `payment_id`, the highest `version` winning).
    pub payments: &'a [PaymentRecord],
    /// The refunds of those payments (any status, any day); likewise deduplicated by
    /// `refund_id`.
    pub refunds: &'a [RefundRecord],
    /// The China day, Unix ms, start inclusive, end exclusive ([`china_day`]): which succeeded
    /// payments and refunds the provider must have booked.
    pub day: Range<i64>,
}

/// A China calendar day (UTC+8, no daylight saving) as Unix ms `[midnight, next midnight)`.
pub fn china_day(date: time::Date) -> Range<i64> {
    let start = date
        .midnight()
        .assume_offset(time::macros::offset!(+8))
        .unix_timestamp()
        .saturating_mul(1000);
    start..start.saturating_add(86_400_000)
}

/// Compares one account's statement of one day with the ledger's view of that account and day.
///
/// # Rules
///
/// - A payment row matches the ledger payment with the same `out_trade_no` (the caller scoped
///   both to the account). Should the ledger hold several, the `succeeded` one with the smallest
///   `payment_id` is taken (else the smallest `payment_id`); the others are not named by the row.
/// - Payment row, ledger payment `succeeded` (a refunded payment still is), same amount: matched;
///   its [`ActualFee`] is the row's fee.
/// - Payment row, ledger payment absent or not `succeeded` (pending, unknown, closed, failed):
///   `missing_locally`, whatever the amounts.
/// - Payment row, ledger payment `succeeded`, amount differs: `amount_mismatch`.
/// - Two or more payment rows with one `out_trade_no` (a provider books an order number once):
///   `amount_mismatch` for each row, `stated` being their sum; none is matched and no fee is
///   recorded, so that a double booking is never half-accepted. Checked before the status.
/// - A ledger payment `succeeded` with `paid_at` in `day` that no payment row names:
///   `missing_at_provider`. (A payment of another day named by a row is compared, never
///   reported missing.)
/// - A refund row matches the ledger refund with the same `out_trade_no` and `out_refund_no`
///   (several: as for payments, by `refund_id`). Absent or not `succeeded` here (pending,
///   abnormal, failed), or the row has no refund number: `refund_missing_locally`.
/// - Refund row, ledger refund `succeeded`, amount differs: `refund_mismatch`; same amount:
///   matched, its [`RefundFee`] is the row's (returned, so usually negative) fee.
/// - Two or more refund rows with one (`out_trade_no`, `out_refund_no`): `refund_mismatch` for
///   each row, `stated` their sum, none matched.
/// - A ledger refund `succeeded` with `succeeded_at` in `day` that no refund row names:
///   `refund_mismatch` with `stated: None`. Not a sixth kind: DESIGN lists five, the metric's
///   label set and the stored kinds stay those five, and "the refund as recorded is not what
///   the provider booked (here: nothing)" is what `refund_mismatch` says; `stated: None` and
///   `row: None` tell this case apart, as they do `missing_at_provider` from `amount_mismatch`.
///
/// Fees: a payment's fee and a refund's returned fee are reported apart (`fees`,
/// `refund_fees`), not netted. A refund is usually booked on another day than its payment, so a
/// netted figure would depend on which days were compared, and in which order; kept apart, each
/// is a fact of one row, idempotent to store again, and the net is their integer sum.
///
/// Never panics, whatever the input: duplicates, empty numbers and absurd amounts included.
pub fn compare(statement: &Statement, ledger: &LedgerDay<'_>) -> Comparison {
    let payments = latest(ledger.payments, |p| p.payment_id.as_str(), payment_rank);
    let refunds = latest(ledger.refunds, |r| r.refund_id.as_str(), refund_rank);

    // The ledger by order number: the record a row names first.
    let mut payment_by_no: BTreeMap<&str, Vec<&PaymentRecord>> = BTreeMap::new();
    for p in payments.values() {
        payment_by_no.entry(&p.out_trade_no).or_default().push(p);
    }
    for group in payment_by_no.values_mut() {
        group.sort_by(|a, b| {
            (a.status != PaymentStatus::Succeeded, &a.payment_id)
                .cmp(&(b.status != PaymentStatus::Succeeded, &b.payment_id))
        });
    }
    let mut refund_by_no: BTreeMap<(&str, &str), Vec<&RefundRecord>> = BTreeMap::new();
    for r in refunds.values() {
        refund_by_no
            .entry((&r.out_trade_no, &r.out_refund_no))
            .or_default()
            .push(r);
    }
    for group in refund_by_no.values_mut() {
        group.sort_by(|a, b| {
            (a.status != RefundStatus::Succeeded, &a.refund_id)
                .cmp(&(b.status != RefundStatus::Succeeded, &b.refund_id))
        });
    }

    // The statement by order (and refund) number (the final sort orders rows within a group).
    let mut paid_rows: BTreeMap<&str, Vec<&StatementRow>> = BTreeMap::new();
    let mut refund_rows: BTreeMap<(&str, Option<&str>), Vec<&StatementRow>> = BTreeMap::new();
    for row in &statement.rows {
        match row.kind {
            RowKind::Payment => paid_rows.entry(&row.out_trade_no).or_default().push(row),
            RowKind::Refund => refund_rows
                .entry((&row.out_trade_no, row.out_refund_no.as_deref()))
                .or_default()
                .push(row),
        }
    }

    let mut out = Comparison {
        rows: statement.rows.len(),
        ..Comparison::default()
    };
    let mut named_payments: BTreeSet<&str> = BTreeSet::new();
    let mut named_refunds: BTreeSet<&str> = BTreeSet::new();

    for (&out_trade_no, rows) in &paid_rows {
        let payment = payment_by_no
            .get(out_trade_no)
            .and_then(|g| g.first().copied());
        if let Some(p) = payment {
            named_payments.insert(&p.payment_id);
        }
        let found = |kind, stated, row: &StatementRow| Discrepancy {
            kind,
            out_trade_no: out_trade_no.to_string(),
            out_refund_no: None,
            payment_id: payment.map(|p| p.payment_id.clone()),
            stated: Some(stated),
            recorded: payment.map(|p| p.amount),
            row: Some(row.clone()),
        };
        if let [row] = rows.as_slice() {
            match payment {
                Some(p) if p.status == PaymentStatus::Succeeded && p.amount == row.amount => {
                    out.matched += 1;
                    out.fees.push(ActualFee {
                        payment_id: p.payment_id.clone(),
                        fee: row.fee,
                    });
                }
                Some(p) if p.status == PaymentStatus::Succeeded => {
                    out.discrepancies
                        .push(found(DiscrepancyKind::AmountMismatch, row.amount, row))
                }
                _ => {
                    out.discrepancies
                        .push(found(DiscrepancyKind::MissingLocally, row.amount, row))
                }
            }
        } else {
            let stated = sum(rows);
            for row in rows {
                out.discrepancies
                    .push(found(DiscrepancyKind::AmountMismatch, stated, row));
            }
        }
    }

    for p in payments.values() {
        if p.status == PaymentStatus::Succeeded
            && p.paid_at.is_some_and(|t| ledger.day.contains(&t))
            && !named_payments.contains(p.payment_id.as_str())
        {
            out.discrepancies.push(Discrepancy {
                kind: DiscrepancyKind::MissingAtProvider,
                out_trade_no: p.out_trade_no.clone(),
                out_refund_no: None,
                payment_id: Some(p.payment_id.clone()),
                stated: None,
                recorded: Some(p.amount),
                row: None,
            });
        }
    }

    for (&(out_trade_no, out_refund_no), rows) in &refund_rows {
        let refund = out_refund_no
            .and_then(|no| refund_by_no.get(&(out_trade_no, no)))
            .and_then(|g| g.first().copied());
        if let Some(r) = refund {
            named_refunds.insert(&r.refund_id);
        }
        let payment_id = refund.map(|r| r.payment_id.clone()).or_else(|| {
            payment_by_no
                .get(out_trade_no)
                .and_then(|g| g.first())
                .map(|p| p.payment_id.clone())
        });
        let found = |kind, stated, row: &StatementRow| Discrepancy {
            kind,
            out_trade_no: out_trade_no.to_string(),
            out_refund_no: out_refund_no.map(str::to_string),
            payment_id: payment_id.clone(),
            stated: Some(stated),
            recorded: refund.map(|r| r.amount),
            row: Some(row.clone()),
        };
        if let [row] = rows.as_slice() {
            match refund {
                Some(r) if r.status == RefundStatus::Succeeded && r.amount == row.amount => {
                    out.matched += 1;
                    out.refund_fees.push(RefundFee {
                        payment_id: r.payment_id.clone(),
                        refund_id: r.refund_id.clone(),
                        fee: row.fee,
                    });
                }
                Some(r) if r.status == RefundStatus::Succeeded => {
                    out.discrepancies
                        .push(found(DiscrepancyKind::RefundMismatch, row.amount, row))
                }
                _ => out.discrepancies.push(found(
                    DiscrepancyKind::RefundMissingLocally,
                    row.amount,
                    row,
                )),
            }
        } else {
            let stated = sum(rows);
            for row in rows {
                out.discrepancies
                    .push(found(DiscrepancyKind::RefundMismatch, stated, row));
            }
        }
    }

    for r in refunds.values() {
        if r.status == RefundStatus::Succeeded
            && r.succeeded_at.is_some_and(|t| ledger.day.contains(&t))
            && !named_refunds.contains(r.refund_id.as_str())
        {
            out.discrepancies.push(Discrepancy {
                kind: DiscrepancyKind::RefundMismatch,
                out_trade_no: r.out_trade_no.clone(),
                out_refund_no: Some(r.out_refund_no.clone()),
                payment_id: Some(r.payment_id.clone()),
                stated: None,
                recorded: Some(r.amount),
                row: None,
            });
        }
    }

    out.discrepancies.sort_by(|a, b| {
        (
            a.kind,
            &a.out_trade_no,
            &a.out_refund_no,
            &a.payment_id,
            a.stated,
            a.recorded,
            a.row.as_ref().map(row_key),
        )
            .cmp(&(
                b.kind,
                &b.out_trade_no,
                &b.out_refund_no,
                &b.payment_id,
                b.stated,
                b.recorded,
                b.row.as_ref().map(row_key),
            ))
    });
    out.fees
        .sort_by(|a, b| (&a.payment_id, a.fee).cmp(&(&b.payment_id, b.fee)));
    out.refund_fees.sort_by(|a, b| {
        (&a.payment_id, &a.refund_id, a.fee).cmp(&(&b.payment_id, &b.refund_id, b.fee))
    });
    out
}

/// One record per id: the one with the highest rank (a record given twice, or twice at
/// different versions, counts once and at its latest).
fn latest<'a, T, K: Ord>(
    records: &'a [T],
    id: impl Fn(&'a T) -> &'a str,
    rank: impl Fn(&T) -> K,
) -> BTreeMap<&'a str, &'a T> {
    let mut by_id: BTreeMap<&'a str, &'a T> = BTreeMap::new();
    for r in records {
        let slot = by_id.entry(id(r)).or_insert(r);
        if rank(r) > rank(slot) {
            *slot = r;
        }
    }
    by_id
}

/// Later versions first; ties (which a store never writes) broken by content, so that the
/// choice does not depend on the input's order.
fn payment_rank(p: &PaymentRecord) -> (i64, i64, &'static str, Option<i64>, u64, u64) {
    (
        p.version,
        p.updated_at,
        p.status.as_str(),
        p.paid_at,
        p.amount,
        p.refunded_amount,
    )
}

fn refund_rank(r: &RefundRecord) -> (i64, i64, &'static str, Option<i64>, u64) {
    (
        r.version,
        r.updated_at,
        r.status.as_str(),
        r.succeeded_at,
        r.amount,
    )
}

type RowKey<'a> = (
    u8,
    &'a str,
    Option<&'a str>,
    u64,
    i64,
    &'a str,
    Option<&'a str>,
    &'a str,
    Option<&'a str>,
);

/// A total order on rows, for a deterministic output whatever the file's order.
fn row_key(r: &StatementRow) -> RowKey<'_> {
    (
        match r.kind {
            RowKind::Payment => 0,
            RowKind::Refund => 1,
        },
        &r.out_trade_no,
        r.out_refund_no.as_deref(),
        r.amount,
        r.fee,
        &r.provider_trade_no,
        r.provider_refund_no.as_deref(),
        &r.at,
        r.account.as_deref(),
    )
}

/// The rows' amounts added up; saturating, as only a hand-made statement could overflow (the
/// parsers refuse a day whose totals do not fit).
fn sum(rows: &[&StatementRow]) -> u64 {
    rows.iter().fold(0, |s: u64, r| s.saturating_add(r.amount))
}
