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
