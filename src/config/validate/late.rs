//! `late_payments` (top level) and `merchants.<id>.late_payments`: what happens to a payment
//! reported after its order ended (ARCHITECTURE.md, "Money rules": late and duplicate payments).

use std::collections::HashMap;

use super::Errors;
use crate::config::file::FileConfig;
use crate::domain::{LatePolicies, LatePolicy};

pub(super) fn late_payments(f: &FileConfig, errs: &mut Errors) -> LatePolicies {
    let default = f
        .late_payments
        .as_deref()
        .and_then(|v| policy(v, "late_payments", errs))
        .unwrap_or_default();
    let mut merchants = HashMap::new();
    for (id, m) in &f.merchants {
        if let Some(v) = m.late_payments.as_deref() {
            if let Some(p) = policy(v, &format!("merchants.{id}.late_payments"), errs) {
                merchants.insert(id.clone(), p);
            }
        }
    }
    LatePolicies { default, merchants }
}

fn policy(value: &str, path: &str, errs: &mut Errors) -> Option<LatePolicy> {
    let parsed = LatePolicy::parse(value);
    if parsed.is_none() {
        let known: Vec<&str> = LatePolicy::ALL.iter().map(|p| p.as_str()).collect();
        errs.push(
            path,
            format!("{path}: {value:?} is not one of {}", known.join(", ")),
        );
    }
    parsed
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;
    use crate::domain::LatePolicy;

    fn shipped() -> String {
        crate::fixture("../../config/payroute.yaml")
    }

    #[test]
    fn the_default_is_refund_and_a_merchant_may_keep() {
        let c = Config::from_text(Path::new("t.yaml"), &shipped()).unwrap();
        assert_eq!(c.late_payments.for_merchant("m_1001"), LatePolicy::Refund);
        let text = format!("{}\nlate_payments: keep\n", shipped())
            .replace("  m_2002: { ", "  m_2002: { late_payments: refund, ");
        let c = Config::from_text(Path::new("t.yaml"), &text).unwrap();
        assert_eq!(c.late_payments.for_merchant("m_1001"), LatePolicy::Keep);
        assert_eq!(c.late_payments.for_merchant("m_2002"), LatePolicy::Refund);
    }

    #[test]
    fn an_unknown_policy_names_its_key() {
        let text = format!("{}\nlate_payments: sometimes\n", shipped())
            .replace("  m_2002: { ", "  m_2002: { late_payments: never, ");
        let errors = Config::from_text(Path::new("t.yaml"), &text)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            errors.contains(r#"late_payments: "sometimes" is not one of refund, keep"#),
            "{errors}"
        );
        assert!(
            errors
                .contains(r#"merchants.m_2002.late_payments: "never" is not one of refund, keep"#),
            "{errors}"
        );
    }
}
