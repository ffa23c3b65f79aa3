//! Rule evaluation at 10 and 10,000 rules (one merchant per rule, every tenth a weighted
//! split), against a naive baseline that scans every rule in file order.
//!
//! Run: `cargo bench --bench routing`.

use std::collections::{BTreeMap, HashMap, HashSet};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use payroute::domain::{Family, Method};
use payroute::routing::{Conditions, PaymentFacts, Rule, Rules, Target};

fn rules(n: usize) -> Rules {
    let rules = (0..n)
        .map(|i| Rule {
            name: format!("rule-{i}"),
            when: Conditions {
                merchants: Some(HashSet::from([format!("m_{i}")])),
                methods: Family::Wechat.method_bits(),
                amount_max: Some(1_000_000),
                ..Conditions::default()
            },
            target: if i % 10 == 0 {
                Target::Split {
                    choices: vec![(format!("own_{i}"), 5), ("platform_wechat".into(), 95)],
                    total: 100,
                }
            } else {
                Target::To(format!("own_{i}"))
            },
            fallback: vec!["platform_wechat".into()],
        })
        .collect();
    Rules::new(
        rules,
        HashMap::from([(Family::Wechat, "platform_wechat".to_string())]),
    )
}

fn bench(c: &mut Criterion) {
    let metadata = BTreeMap::new();
    let mut group = c.benchmark_group("route_decision");
    for n in [10usize, 10_000] {
        let rules = rules(n);
        // The last rule's merchant: the worst case for a scan in file order.
        let merchant = format!("m_{}", n - 1);
        let facts = PaymentFacts {
            merchant: &merchant,
            shop: "shop",
            method: Method::WechatNative,
            amount: 1999,
            currency: "CNY",
            metadata: &metadata,
            out_trade_no: "ORD20261125000123",
            china_minute: 600,
        };
        group.bench_with_input(BenchmarkId::new("indexed", n), &facts, |b, f| {
            b.iter(|| rules.decide(black_box(f)).map(|d| d.channel.len()))
        });
        group.bench_with_input(
            BenchmarkId::new("linear_scan_baseline", n),
            &facts,
            |b, f| {
                b.iter(|| {
                    rules
                        .rules()
                        .iter()
                        .find(|r| r.matches(black_box(f)))
                        .map(|r| r.name.len())
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
