//! `late_payments` (top level) and `merchants.<id>.late_payments`: what happens to a payment
//! reported after its order ended (DESIGN.md §13).

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
