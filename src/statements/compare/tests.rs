//! [`compare`]'s rules, each by a test that fails should the rule break.

use super::*;

#[test]
fn kinds_are_named_in_snake_case_and_parse_back() {
    let names: Vec<_> = DiscrepancyKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "missing_locally",
            "missing_at_provider",
            "amount_mismatch",
            "refund_missing_locally",
            "refund_mismatch"
        ]
    );
    for k in DiscrepancyKind::ALL {
        assert_eq!(DiscrepancyKind::parse(k.as_str()), Some(k));
        assert_eq!(k.to_string(), k.as_str());
    }
    assert_eq!(DiscrepancyKind::parse("missing"), None);
}

use serde_json::json;
use time::macros::{date, datetime};

use crate::domain::Method;

use DiscrepancyKind::*;

mod fixture;

/// 2026-11-30, China time: the day of the fixtures.
fn day() -> Range<i64> {
    china_day(date!(2026 - 11 - 30))
}

/// Unix ms at `h`:`m` China time on the day.
fn at(h: i64, m: i64) -> i64 {
    day().start + (h * 60 + m) * 60_000
}

fn payment(
    id: &str,
    no: &str,
    amount: u64,
    status: PaymentStatus,
    paid_at: Option<i64>,
) -> PaymentRecord {
    PaymentRecord {
        payment_id: id.into(),
        merchant_id: "m_1001".into(),
        shop_id: "s".into(),
        out_trade_no: no.into(),
        amount,
        currency: "CNY".into(),
        method: Method::WechatNative,
        status,
        channel: "wx".into(),
        account: None,
        rule: "default".into(),
        action: None,
        provider_trade_no: None,
        refunded_amount: 0,
        request_hash: String::new(),
        request: json!({}),
        error_code: None,
        error_message: None,
        attempt_until: None,
        created_at: 0,
        updated_at: 0,
        paid_at,
        expires_at: 0,
        version: 1,
        late: false,
    }
}

fn paid(id: &str, no: &str, amount: u64) -> PaymentRecord {
    payment(id, no, amount, PaymentStatus::Succeeded, Some(at(10, 0)))
}

fn refund(
    id: &str,
    payment_id: &str,
    no: &str,
    refund_no: &str,
    amount: u64,
    status: RefundStatus,
    succeeded_at: Option<i64>,
) -> RefundRecord {
    RefundRecord {
        refund_id: id.into(),
        merchant_id: "m_1001".into(),
        shop_id: "s".into(),
        out_trade_no: no.into(),
        out_refund_no: refund_no.into(),
        payment_id: payment_id.into(),
        channel: "wx".into(),
        amount,
        reason: None,
        status,
        provider_refund_no: None,
        request_hash: String::new(),
        error_code: None,
        error_message: None,
        attempt_until: None,
        created_at: 0,
        updated_at: 0,
        succeeded_at,
        version: 1,
    }
}

fn refunded(id: &str, payment_id: &str, no: &str, refund_no: &str, amount: u64) -> RefundRecord {
    let t = Some(at(11, 0));
    refund(
        id,
        payment_id,
        no,
        refund_no,
        amount,
        RefundStatus::Succeeded,
        t,
    )
}

fn pay_row(no: &str, amount: u64, fee: i64) -> StatementRow {
    StatementRow {
        kind: RowKind::Payment,
        out_trade_no: no.into(),
        provider_trade_no: format!("42{no}"),
        out_refund_no: None,
        provider_refund_no: None,
        amount,
        fee,
        at: "2026-11-30 10:00:05".into(),
        account: Some("1900000109".into()),
    }
}

fn refund_row(no: &str, refund_no: Option<&str>, amount: u64, fee: i64) -> StatementRow {
    StatementRow {
        kind: RowKind::Refund,
        out_refund_no: refund_no.map(Into::into),
        provider_refund_no: Some("5000".into()),
        at: "2026-11-30 11:00:00".into(),
        ..pay_row(no, amount, fee)
    }
}

/// Compares, and checks what holds of every comparison: each row either matched or is in
/// exactly one discrepancy.
fn run(rows: &[StatementRow], payments: &[PaymentRecord], refunds: &[RefundRecord]) -> Comparison {
    let statement = Statement {
        rows: rows.to_vec(),
        ..Statement::default()
    };
    let c = compare(
        &statement,
        &LedgerDay {
            payments,
            refunds,
            day: day(),
        },
    );
    let with_row = c.discrepancies.iter().filter(|d| d.row.is_some()).count();
    assert_eq!(c.rows, rows.len());
    assert_eq!(c.rows, c.matched + with_row, "{c:#?}");
    c
}

/// The discrepancies as (kind, out_trade_no, out_refund_no, payment_id, stated, recorded).
type Brief = (
    DiscrepancyKind,
    String,
    Option<String>,
    Option<String>,
    Option<u64>,
    Option<u64>,
);

fn brief(c: &Comparison) -> Vec<Brief> {
    c.discrepancies
        .iter()
        .map(|d| {
            (
                d.kind,
                d.out_trade_no.clone(),
                d.out_refund_no.clone(),
                d.payment_id.clone(),
                d.stated,
                d.recorded,
            )
        })
        .collect()
}

fn d(
    kind: DiscrepancyKind,
    no: &str,
    refund_no: Option<&str>,
    payment_id: Option<&str>,
    stated: Option<u64>,
    recorded: Option<u64>,
) -> Brief {
    (
        kind,
        no.into(),
        refund_no.map(Into::into),
        payment_id.map(Into::into),
        stated,
        recorded,
    )
}

fn fee(payment_id: &str, fee: i64) -> ActualFee {
    ActualFee {
        payment_id: payment_id.into(),
        fee,
    }
}

#[test]
fn a_china_day_starts_at_midnight_utc_plus_8() {
    let d = day();
    assert_eq!(
        d.start,
        datetime!(2026-11-29 16:00 UTC).unix_timestamp() * 1000
    );
    assert_eq!(d.end - d.start, 86_400_000);
}

#[test]
fn a_fully_matched_day_reports_every_fee() {
    let c = run(
        &[
            pay_row("O1", 1999, 8),
            pay_row("O3", 8800, 33),
            refund_row("O1", Some("O1-r1"), 500, -2),
        ],
        &[paid("p1", "O1", 1999), paid("p3", "O3", 8800)],
        &[refunded("r1", "p1", "O1", "O1-r1", 500)],
    );
    assert_eq!(brief(&c), []);
    assert_eq!(c.matched, 3);
    assert_eq!(c.fees, [fee("p1", 8), fee("p3", 33)]);
    assert_eq!(
        c.refund_fees,
        [RefundFee {
            payment_id: "p1".into(),
            refund_id: "r1".into(),
            fee: -2
        }]
    );
}

#[test]
fn a_refunded_payment_still_matches() {
    // Refunded in full on an earlier day: still `succeeded` in payroute, its payment row matches.
    let mut p = paid("p1", "O1", 1999);
    p.refunded_amount = 1999;
    let earlier = Some(day().start - 3_600_000);
    let r = refund(
        "r1",
        "p1",
        "O1",
        "O1-r1",
        1999,
        RefundStatus::Succeeded,
        earlier,
    );
    let c = run(&[pay_row("O1", 1999, 8)], &[p], &[r]);
    assert_eq!(brief(&c), []);
    assert_eq!((c.matched, c.fees.clone()), (1, vec![fee("p1", 8)]));
    assert_eq!(c.refund_fees, []);
}

#[test]
fn a_payment_not_succeeded_here_or_absent_is_missing_locally() {
    use PaymentStatus::*;
    for status in [Pending, Unknown, Closed, Failed] {
        // The amount differs too: the status decides the kind.
        let c = run(
            &[pay_row("O1", 1999, 8)],
            &[payment("p1", "O1", 2000, status, None)],
            &[],
        );
        assert_eq!(
            brief(&c),
            [d(
                MissingLocally,
                "O1",
                None,
                Some("p1"),
                Some(1999),
                Some(2000)
            )],
            "{status:?}"
        );
        assert_eq!(c.discrepancies[0].row, Some(pay_row("O1", 1999, 8)));
        assert_eq!((c.matched, c.fees.len()), (0, 0));
    }
    let c = run(&[pay_row("O1", 1999, 8)], &[paid("p2", "O2", 1999)], &[]);
    assert_eq!(
        brief(&c),
        [
            d(MissingLocally, "O1", None, None, Some(1999), None),
            d(MissingAtProvider, "O2", None, Some("p2"), None, Some(1999)),
        ]
    );
}

#[test]
fn a_succeeded_payment_of_another_amount_is_an_amount_mismatch() {
    let c = run(
        &[pay_row("O1", 1999, 8), pay_row("O3", 8800, 33)],
        &[paid("p1", "O1", 1990), paid("p3", "O3", 8800)],
        &[],
    );
    assert_eq!(
        brief(&c),
        [d(
            AmountMismatch,
            "O1",
            None,
            Some("p1"),
            Some(1999),
            Some(1990)
        )]
    );
    // Only the matched payment's fee: a mismatched one is not booked until resolved.
    assert_eq!(c.fees, [fee("p3", 33)]);
}

#[test]
fn an_empty_statement_with_a_succeeded_payment_is_missing_at_provider() {
    let c = run(
        &[],
        &[
            payment(
                "first",
                "O1",
                100,
                PaymentStatus::Succeeded,
                Some(day().start),
            ),
            paid("p2", "O2", 200),
            // Not on the day, or not paid: the provider owes no row.
            payment("next", "O3", 300, PaymentStatus::Succeeded, Some(day().end)),
            payment(
                "prev",
                "O4",
                400,
                PaymentStatus::Succeeded,
                Some(day().start - 1),
            ),
            payment("open", "O5", 500, PaymentStatus::Pending, Some(at(9, 0))),
            payment("none", "O6", 600, PaymentStatus::Succeeded, None),
        ],
        &[],
    );
    assert_eq!(
        brief(&c),
        [
            d(
                MissingAtProvider,
                "O1",
                None,
                Some("first"),
                None,
                Some(100)
            ),
            d(MissingAtProvider, "O2", None, Some("p2"), None, Some(200)),
        ]
    );
    assert_eq!((c.rows, c.matched), (0, 0));
    assert_eq!(c.discrepancies[0].row, None);
}

#[test]
fn a_payment_of_another_day_named_by_a_row_is_compared_not_missing() {
    let yesterday = payment("p1", "O1", 1999, PaymentStatus::Succeeded, Some(at(-1, 0)));
    let c = run(&[pay_row("O1", 1999, 8)], &[yesterday], &[]);
    assert_eq!(brief(&c), []);
    assert_eq!(c.fees, [fee("p1", 8)]);
}

#[test]
fn a_refund_not_succeeded_here_or_absent_is_refund_missing_locally() {
    use RefundStatus::*;
    for status in [Pending, Abnormal, Failed] {
        let c = run(
            &[refund_row("O1", Some("O1-r1"), 500, -2)],
            &[paid("p1", "O1", 1999)],
            &[refund("r1", "p1", "O1", "O1-r1", 400, status, None)],
        );
        assert_eq!(
            brief(&c),
            [
                d(MissingAtProvider, "O1", None, Some("p1"), None, Some(1999)),
                d(
                    RefundMissingLocally,
                    "O1",
                    Some("O1-r1"),
                    Some("p1"),
                    Some(500),
                    Some(400)
                ),
            ],
            "{status:?}"
        );
        assert_eq!(c.refund_fees, []);
    }
    // Absent: no such refund number, or that number on another order, or no number at all.
    let c = run(
        &[
            refund_row("O1", Some("O1-r2"), 500, -2),
            refund_row("O1", Some("O9-r1"), 300, -1),
            refund_row("O1", None, 200, -1),
        ],
        &[payment(
            "p1",
            "O1",
            1999,
            PaymentStatus::Succeeded,
            Some(at(-24, 0)),
        )],
        &[refunded("r9", "p9", "O9", "O9-r1", 300)],
    );
    assert_eq!(
        brief(&c),
        [
            d(
                RefundMissingLocally,
                "O1",
                None,
                Some("p1"),
                Some(200),
                None
            ),
            d(
                RefundMissingLocally,
                "O1",
                Some("O1-r2"),
                Some("p1"),
                Some(500),
                None
            ),
            d(
                RefundMissingLocally,
                "O1",
                Some("O9-r1"),
                Some("p1"),
                Some(300),
                None
            ),
            // The ledger's refund of O9 succeeded on the day and has no row of its own.
            d(
                RefundMismatch,
                "O9",
                Some("O9-r1"),
                Some("p9"),
                None,
                Some(300)
            ),
        ]
    );
}

#[test]
fn a_refund_of_another_amount_or_unbooked_is_a_refund_mismatch() {
    let earlier = Some(day().start - 1);
    let c = run(
        &[
            pay_row("O1", 1999, 8),
            refund_row("O1", Some("O1-r1"), 500, -2),
        ],
        &[paid("p1", "O1", 1999)],
        &[
            refunded("r1", "p1", "O1", "O1-r1", 600),
            // Succeeded on the day, no row: the provider did not book it.
            refunded("r2", "p1", "O1", "O1-r2", 100),
            // Succeeded the day before, or still pending: not this statement's.
            refund(
                "r3",
                "p1",
                "O1",
                "O1-r3",
                100,
                RefundStatus::Succeeded,
                earlier,
            ),
            refund("r4", "p1", "O1", "O1-r4", 100, RefundStatus::Pending, None),
        ],
    );
    assert_eq!(
        brief(&c),
        [
            d(
                RefundMismatch,
                "O1",
                Some("O1-r1"),
                Some("p1"),
                Some(500),
                Some(600)
            ),
            d(
                RefundMismatch,
                "O1",
                Some("O1-r2"),
                Some("p1"),
                None,
                Some(100)
            ),
        ]
    );
    assert_eq!(c.discrepancies[1].row, None);
    assert_eq!((c.matched, c.fees.clone()), (1, vec![fee("p1", 8)]));
}

#[test]
fn an_order_booked_twice_is_an_amount_mismatch_for_each_row() {
    let rows = [
        pay_row("O1", 1999, 8),
        pay_row("O1", 1999, 8),
        refund_row("O1", Some("O1-r1"), 500, -2),
        refund_row("O1", Some("O1-r1"), 400, -1),
    ];
    let c = run(
        &rows,
        &[paid("p1", "O1", 1999)],
        &[refunded("r1", "p1", "O1", "O1-r1", 500)],
    );
    assert_eq!(
        brief(&c),
        [
            d(
                AmountMismatch,
                "O1",
                None,
                Some("p1"),
                Some(3998),
                Some(1999)
            ),
            d(
                AmountMismatch,
                "O1",
                None,
                Some("p1"),
                Some(3998),
                Some(1999)
            ),
            d(
                RefundMismatch,
                "O1",
                Some("O1-r1"),
                Some("p1"),
                Some(900),
                Some(500)
            ),
            d(
                RefundMismatch,
                "O1",
                Some("O1-r1"),
                Some("p1"),
                Some(900),
                Some(500)
            ),
        ]
    );
    // Each row is there for ops, and nothing is half-accepted.
    let shown: Vec<_> = c
        .discrepancies
        .iter()
        .filter_map(|d| d.row.clone())
        .collect();
    // In a total order of the rows (here: the smaller refund first), not the file's.
    let sorted = [&rows[0], &rows[1], &rows[3], &rows[2]].map(Clone::clone);
    assert_eq!(shown, sorted);
    assert_eq!((c.matched, c.fees.len(), c.refund_fees.len()), (0, 0, 0));
    // Not paid here either: still the double booking, not missing_locally.
    let open = payment("p1", "O1", 1999, PaymentStatus::Pending, None);
    let c = run(&rows[..2], &[open], &[]);
    assert_eq!(
        brief(&c).iter().map(|b| b.0).collect::<Vec<_>>(),
        [AmountMismatch, AmountMismatch]
    );
}

#[test]
fn the_ledger_given_twice_counts_once_at_its_latest_version() {
    // The caller's two selections (paid on the day, named by the statement) overlap.
    let old = payment("p1", "O1", 1999, PaymentStatus::Pending, None);
    let new = PaymentRecord {
        version: 2,
        ..paid("p1", "O1", 1999)
    };
    let r_old = refund("r1", "p1", "O1", "O1-r1", 500, RefundStatus::Pending, None);
    let r_new = RefundRecord {
        version: 2,
        ..refunded("r1", "p1", "O1", "O1-r1", 500)
    };
    for (payments, refunds) in [
        (
            vec![old.clone(), new.clone(), new.clone()],
            vec![r_old.clone(), r_new.clone()],
        ),
        (
            vec![new.clone(), old.clone()],
            vec![r_new.clone(), r_old.clone(), r_new.clone()],
        ),
    ] {
        let c = run(
            &[
                pay_row("O1", 1999, 8),
                refund_row("O1", Some("O1-r1"), 500, -2),
            ],
            &payments,
            &refunds,
        );
        assert_eq!(brief(&c), []);
        assert_eq!((c.fees.len(), c.refund_fees.len()), (1, 1));
        // Unnamed and paid on the day, given twice: reported once.
        let c = run(&[], &payments, &refunds);
        assert_eq!(
            brief(&c),
            [
                d(MissingAtProvider, "O1", None, Some("p1"), None, Some(1999)),
                d(
                    RefundMismatch,
                    "O1",
                    Some("O1-r1"),
                    Some("p1"),
                    None,
                    Some(500)
                ),
            ]
        );
    }
}

#[test]
fn two_ledger_payments_of_one_order_number_the_succeeded_one_is_named() {
    let closed = payment("a", "O1", 1999, PaymentStatus::Closed, None);
    let c = run(
        &[pay_row("O1", 1999, 8)],
        &[closed.clone(), paid("b", "O1", 1999)],
        &[],
    );
    assert_eq!(brief(&c), []);
    assert_eq!(c.fees, [fee("b", 8)]);
    // Both succeeded on the day: the provider can book one order number once, the other is
    // missing there.
    let c = run(
        &[pay_row("O1", 1999, 8)],
        &[paid("b", "O1", 1999), paid("a", "O1", 1999)],
        &[],
    );
    assert_eq!(
        brief(&c),
        [d(
            MissingAtProvider,
            "O1",
            None,
            Some("b"),
            None,
            Some(1999)
        )]
    );
    assert_eq!(c.fees, [fee("a", 8)]);
}

/// A day with every kind, some twice.
fn every_kind() -> (Vec<StatementRow>, Vec<PaymentRecord>, Vec<RefundRecord>) {
    let rows = vec![
        pay_row("A", 100, 1),
        pay_row("B", 200, 1),
        pay_row("C", 300, 1),
        pay_row("D", 400, 2),
        pay_row("D", 400, 2),
        pay_row("E", 500, 2),
        refund_row("A", Some("A-r1"), 50, -1),
        refund_row("A", Some("A-r2"), 10, 0),
        refund_row("B", Some("B-r1"), 70, 0),
        refund_row("E", Some("E-r1"), 80, 0),
    ];
    let payments = vec![
        paid("pa", "A", 100),
        payment("pb", "B", 200, PaymentStatus::Unknown, None),
        paid("pc", "C", 301),
        paid("pd", "D", 400),
        paid("pe", "E", 500),
        paid("pf", "F", 600),
        paid("pg", "G", 700),
    ];
    let refunds = vec![
        refunded("ra1", "pa", "A", "A-r1", 50),
        refund("ra2", "pa", "A", "A-r2", 10, RefundStatus::Pending, None),
        refunded("re1", "pe", "E", "E-r1", 81),
        refunded("rf1", "pf", "F", "F-r1", 60),
    ];
    (rows, payments, refunds)
}

#[test]
fn every_kind_in_one_day_sorted_by_kind_then_numbers() {
    let (rows, payments, refunds) = every_kind();
    let c = run(&rows, &payments, &refunds);
    assert_eq!(
        brief(&c),
        [
            d(MissingLocally, "B", None, Some("pb"), Some(200), Some(200)),
            d(MissingAtProvider, "F", None, Some("pf"), None, Some(600)),
            d(MissingAtProvider, "G", None, Some("pg"), None, Some(700)),
            d(AmountMismatch, "C", None, Some("pc"), Some(300), Some(301)),
            d(AmountMismatch, "D", None, Some("pd"), Some(800), Some(400)),
            d(AmountMismatch, "D", None, Some("pd"), Some(800), Some(400)),
            d(
                RefundMissingLocally,
                "A",
                Some("A-r2"),
                Some("pa"),
                Some(10),
                Some(10)
            ),
            d(
                RefundMissingLocally,
                "B",
                Some("B-r1"),
                Some("pb"),
                Some(70),
                None
            ),
            d(
                RefundMismatch,
                "E",
                Some("E-r1"),
                Some("pe"),
                Some(80),
                Some(81)
            ),
            d(
                RefundMismatch,
                "F",
                Some("F-r1"),
                Some("pf"),
                None,
                Some(60)
            ),
        ]
    );
    assert_eq!(c.matched, 3);
    assert_eq!(c.fees, [fee("pa", 1), fee("pe", 2)]);
}

/// `v` rotated left by `k` (modulo its length), then reversed if asked.
fn turn<T: Clone>(v: &[T], k: usize, reverse: bool) -> Vec<T> {
    let mut v = v.to_vec();
    if !v.is_empty() {
        let n = v.len();
        v.rotate_left(k % n);
    }
    if reverse {
        v.reverse();
    }
    v
}

#[test]
fn the_outcome_does_not_depend_on_the_input_order() {
    let (rows, payments, refunds) = every_kind();
    let expected = run(&rows, &payments, &refunds);
    // Every rotation of each list, each also reversed: a shuffle without randomness, which a
    // failure would make hard to replay.
    for k in 0..rows.len() {
        for reverse in [false, true] {
            let c = run(
                &turn(&rows, k, reverse),
                &turn(&payments, k, reverse),
                &turn(&refunds, k, reverse),
            );
            assert_eq!(c, expected, "rotated by {k}, reversed: {reverse}");
        }
    }
}

#[test]
fn absurd_input_is_reported_never_a_panic() {
    let mut huge = pay_row("", u64::MAX, i64::MIN);
    huge.out_trade_no = String::new();
    let c = run(
        &[
            huge.clone(),
            huge.clone(),
            refund_row("", Some(""), u64::MAX, i64::MAX),
        ],
        &[payment("", "", 0, PaymentStatus::Succeeded, Some(i64::MIN))],
        &[refund(
            "",
            "",
            "",
            "",
            u64::MAX,
            RefundStatus::Succeeded,
            Some(i64::MAX),
        )],
    );
    assert_eq!(
        brief(&c),
        [
            d(AmountMismatch, "", None, Some(""), Some(u64::MAX), Some(0)),
            d(AmountMismatch, "", None, Some(""), Some(u64::MAX), Some(0)),
        ]
    );
    assert_eq!(c.refund_fees[0].fee, i64::MAX);
    // An empty or inverted day holds nothing.
    let statement = Statement::default();
    for day in [
        0..0,
        Range {
            start: 10,
            end: -10,
        },
    ] {
        let payments = [payment("p", "O", 1, PaymentStatus::Succeeded, Some(0))];
        let c = compare(
            &statement,
            &LedgerDay {
                payments: &payments,
                refunds: &[],
                day,
            },
        );
        assert_eq!(c, Comparison::default());
    }
}
