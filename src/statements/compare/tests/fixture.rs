//! [`compare`] on a statement parsed from a fixture of `tests/fixtures/statements/`, read and
//! hashed as `statements::tests` reads them, against hand-made ledger records.

use super::*;
use crate::statements::wechat::parse_tradebill;

fn fixture(name: &str) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/statements/");
    std::fs::read(format!("{path}{name}")).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn sha1(bytes: &[u8]) -> String {
    crate::ids::hex(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes).as_ref(),
    )
}

#[test]
fn the_wechat_direct_fixture_against_a_hand_made_ledger() {
    let bytes = fixture("wechat_tradebill_direct.csv");
    let statement = parse_tradebill(&bytes, false, &sha1(&bytes)).unwrap();
    let paid_at = |h: i64, m: i64, s: i64| Some(at(h, m) + s * 1000);
    let mut order1 = payment(
        "pay_1",
        "ORDER1",
        1999,
        PaymentStatus::Succeeded,
        paid_at(10, 0, 5),
    );
    order1.refunded_amount = 500;
    let order3 = payment(
        "pay_3",
        "ORDER3",
        8800,
        PaymentStatus::Succeeded,
        paid_at(10, 30, 12),
    );
    let r1 = refunded("ref_1", "pay_1", "ORDER1", "ORDER1-r1", 500);
    let ledger = |payments: &[PaymentRecord], refunds: &[RefundRecord]| {
        compare(
            &statement,
            &LedgerDay {
                payments,
                refunds,
                day: day(),
            },
        )
    };

    let c = ledger(&[order1.clone(), order3.clone()], std::slice::from_ref(&r1));
    assert_eq!((c.rows, c.matched), (3, 3));
    assert_eq!(brief(&c), []);
    assert_eq!(c.fees, [fee("pay_1", 8), fee("pay_3", 33)]);
    assert_eq!(
        c.refund_fees,
        [RefundFee {
            payment_id: "pay_1".into(),
            refund_id: "ref_1".into(),
            fee: -2
        }]
    );
    // The fees add up to the file's own total, netted only by the caller.
    let net: i64 = c.fees.iter().map(|f| f.fee).sum::<i64>()
        + c.refund_fees.iter().map(|f| f.fee).sum::<i64>();
    assert_eq!(net, statement.fee_total);

    // ORDER3 still unknown here, an ORDER2 paid here the provider never booked, and the refund
    // still pending: three discrepancies, the provider's rows attached.
    let order3_unknown = PaymentRecord {
        status: PaymentStatus::Unknown,
        paid_at: None,
        ..order3
    };
    let order2 = paid("pay_2", "ORDER2", 4200);
    let r1_pending = RefundRecord {
        status: RefundStatus::Pending,
        succeeded_at: None,
        ..r1
    };
    let c = ledger(&[order3_unknown, order2, order1], &[r1_pending]);
    assert_eq!(
        brief(&c),
        [
            d(
                MissingLocally,
                "ORDER3",
                None,
                Some("pay_3"),
                Some(8800),
                Some(8800)
            ),
            d(
                MissingAtProvider,
                "ORDER2",
                None,
                Some("pay_2"),
                None,
                Some(4200)
            ),
            d(
                RefundMissingLocally,
                "ORDER1",
                Some("ORDER1-r1"),
                Some("pay_1"),
                Some(500),
                Some(500)
            ),
        ]
    );
    assert_eq!(c.discrepancies[0].row.as_ref(), statement.rows.get(1));
    assert_eq!(c.discrepancies[2].row.as_ref(), statement.rows.get(2));
    assert_eq!((c.matched, c.fees.clone()), (1, vec![fee("pay_1", 8)]));
}
