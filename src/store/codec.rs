//! Each table's columns once, and each record's decoder once, over [`Cells`]: what both
//! engines' rows give (`rusqlite::Row`, `tokio_postgres::Row`). Encoding — the parameter
//! lists of inserts and updates — stays with each engine: rusqlite's `params!` and
//! tokio-postgres's `&[&dyn ToSql]` take values of different types (SQLite's `u64` as
//! `i64` by cast, PostgreSQL's through a checked conversion), and a shared layer would cost
//! the hot path an allocation per write for no shared line.

use super::{failure, parse_account, EventRecord, PaymentRecord, RefundRecord, StoreError};
use crate::domain::{EventStatus, EventType, Method, PaymentStatus, RefundStatus};

/// The payments columns in [`read_payment`]'s order (a macro, so that SQLite's hot
/// statements are string literals its statement cache keys on without a `format!`).
macro_rules! payment_columns {
    () => {
        "payment_id, merchant_id, shop_id, out_trade_no, amount, currency, method, status, channel, rule, action, provider_trade_no, refunded_amount, request_hash, request, error_code, error_message, attempt_until, created_at, updated_at, paid_at, expires_at, version, account, late"
    };
}
pub(super) use payment_columns;

pub(super) const PAYMENT_COLUMNS: &str = payment_columns!();

/// In [`read_refund`]'s order.
pub(super) const REFUND_COLUMNS: &str = "refund_id, merchant_id, shop_id, out_trade_no, out_refund_no, payment_id, channel, amount, reason, status, provider_refund_no, request_hash, error_code, error_message, attempt_until, created_at, updated_at, succeeded_at, version";

/// In [`read_event`]'s order: the columns both engines' events have.
macro_rules! event_columns {
    () => {
        "seq, event_id, shop_id, merchant_id, payment_id, event_type, body, status, attempts, next_attempt_at, created_at, delivered_at, last_error"
    };
}

pub(super) const EVENT_COLUMNS: &str = event_columns!();

/// PostgreSQL's events carry one column more, last: the claim token a shared store hands
/// an event out with ([`read_claimed_event`]). SQLite claims nothing (one process).
pub(super) const CLAIMED_EVENT_COLUMNS: &str = concat!(event_columns!(), ", claim");

/// One row's cells by position, as each engine reads them; an engine's own error (a type
/// mismatch, a NULL where none may be) mapped as that engine maps its errors. Each engine
/// implements it for its row beside its error mapping, so the codec imports neither.
pub(super) trait Cells {
    fn text(&self, i: usize) -> Result<String, StoreError>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError>;
    fn int(&self, i: usize) -> Result<i64, StoreError>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    /// SQLite stores it as 0/1, PostgreSQL as `BOOLEAN`.
    fn flag(&self, i: usize) -> Result<bool, StoreError>;
}

/// A count or an amount that must not be negative.
fn unsigned(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v}")))
}

/// A row of [`PAYMENT_COLUMNS`].
pub(super) fn read_payment(row: &impl Cells) -> Result<PaymentRecord, StoreError> {
    let method = row.text(6)?;
    let status = row.text(7)?;
    Ok(PaymentRecord {
        payment_id: row.text(0)?,
        merchant_id: row.text(1)?,
        shop_id: row.text(2)?,
        out_trade_no: row.text(3)?,
        amount: unsigned(row.int(4)?, "amount")?,
        currency: row.text(5)?,
        method: Method::parse(&method)
            .ok_or_else(|| StoreError::Corrupt(format!("method {method}")))?,
        status: PaymentStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("status {status}")))?,
        channel: row.text(8)?,
        rule: row.text(9)?,
        action: row
            .opt_text(10)?
            .map(|a| serde_json::from_str(&a))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("action: {e}")))?,
        provider_trade_no: row.opt_text(11)?,
        refunded_amount: unsigned(row.int(12)?, "refunded")?,
        request_hash: row.text(13)?,
        request: serde_json::from_str(&row.text(14)?)
            .map_err(|e| StoreError::Corrupt(format!("request: {e}")))?,
        error_code: failure(row.opt_text(15)?)?,
        error_message: row.opt_text(16)?,
        attempt_until: row.opt_int(17)?,
        created_at: row.int(18)?,
        updated_at: row.int(19)?,
        paid_at: row.opt_int(20)?,
        expires_at: row.int(21)?,
        version: row.int(22)?,
        account: parse_account(row.opt_text(23)?)?,
        late: row.flag(24)?,
    })
}

/// A row of [`REFUND_COLUMNS`].
pub(super) fn read_refund(row: &impl Cells) -> Result<RefundRecord, StoreError> {
    let status = row.text(9)?;
    Ok(RefundRecord {
        refund_id: row.text(0)?,
        merchant_id: row.text(1)?,
        shop_id: row.text(2)?,
        out_trade_no: row.text(3)?,
        out_refund_no: row.text(4)?,
        payment_id: row.text(5)?,
        channel: row.text(6)?,
        amount: unsigned(row.int(7)?, "refund amount")?,
        reason: row.opt_text(8)?,
        status: RefundStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("refund status {status}")))?,
        provider_refund_no: row.opt_text(10)?,
        request_hash: row.text(11)?,
        error_code: failure(row.opt_text(12)?)?,
        error_message: row.opt_text(13)?,
        attempt_until: row.opt_int(14)?,
        created_at: row.int(15)?,
        updated_at: row.int(16)?,
        succeeded_at: row.opt_int(17)?,
        version: row.int(18)?,
    })
}

/// A row of [`EVENT_COLUMNS`]: an event read without a claim.
pub(super) fn read_event(row: &impl Cells) -> Result<EventRecord, StoreError> {
    let event_type = row.text(5)?;
    let status = row.text(7)?;
    let attempts = row.int(8)?;
    Ok(EventRecord {
        seq: row.int(0)?,
        event_id: row.text(1)?,
        shop_id: row.text(2)?,
        merchant_id: row.text(3)?,
        payment_id: row.text(4)?,
        event_type: EventType::parse(&event_type)
            .ok_or_else(|| StoreError::Corrupt(format!("event_type {event_type}")))?,
        body: row.text(6)?,
        status: EventStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("event status {status}")))?,
        attempts: u32::try_from(attempts)
            .map_err(|_| StoreError::Corrupt(format!("attempts {attempts}")))?,
        next_attempt_at: row.int(9)?,
        created_at: row.int(10)?,
        delivered_at: row.opt_int(11)?,
        last_error: row.opt_text(12)?,
        claim: None,
    })
}

/// A row of [`CLAIMED_EVENT_COLUMNS`] (PostgreSQL): the event and the claim it holds.
pub(super) fn read_claimed_event(row: &impl Cells) -> Result<EventRecord, StoreError> {
    let claim = row.opt_text(13)?;
    Ok(EventRecord {
        claim,
        ..read_event(row)?
    })
}
