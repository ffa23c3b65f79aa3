//! Rule evaluation at 10 and 10,000 rules (one merchant per rule, every tenth a weighted
//! split), against a naive baseline that scans every rule in file order; and the adaptive
//! choice (`choose` over 10 candidates with live health, one eliminated, one drained)
//! against a static `to` and a naive float-scoring sort.
//!
//! Run: `cargo bench --bench routing`.

use std::collections::{BTreeMap, HashMap, HashSet};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use payroute::domain::FeeRate;
use payroute::domain::{Family, Method};
use payroute::routing::{
    By, Choose, Conditions, NoSignals, PaymentFacts, Rule, Rules, Sample, Signals, Target,
    DEFAULT_HEALTH,
};

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
            health: None,
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
            b.iter(|| {
                rules
                    .decide(black_box(f), &NoSignals)
                    .map(|d| d.candidates.len())
            })
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

/// Ten candidates' health and drains, as a live instance holds them.
struct Live {
    health: HashMap<String, Sample>,
    drained: HashSet<String>,
}

impl Signals for Live {
    fn health(&self, channel: &str) -> Sample {
        self.health.get(channel).copied().unwrap_or_default()
    }
    fn drained(&self, channel: &str) -> bool {
        self.drained.contains(channel)
    }
}

fn bench_choose(c: &mut Criterion) {
    const N: usize = 10;
    let names: Vec<String> = (0..N).map(|i| format!("ch_{i}")).collect();
    let fees: HashMap<String, FeeRate> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                n.clone(),
                FeeRate {
                    ppm: 2000 + 500 * i as u32,
                },
            )
        })
        .collect();
    let live = Live {
        health: names
            .iter()
            .enumerate()
            // ch_0 eliminated (10%), the rest between 80% and 98%.
            .map(|(i, n)| {
                let successes = if i == 0 { 20 } else { 160 + 4 * i as u32 };
                (
                    n.clone(),
                    Sample {
                        successes,
                        samples: 200,
                    },
                )
            })
            .collect(),
        drained: HashSet::from(["ch_1".to_string()]),
    };
    let when = Conditions {
        merchants: Some(HashSet::from(["m_1".to_string()])),
        methods: Family::Wechat.method_bits(),
        ..Conditions::default()
    };
    let rule = |target| Rule {
        name: "r".into(),
        when: when.clone(),
        target,
        fallback: vec![],
        health: None,
    };
    let defaults = HashMap::from([(Family::Wechat, "ch_9".to_string())]);
    let choose = Rules::new(
        vec![rule(Target::Choose(Choose {
            from: names.clone(),
            by: By::Value,
            explore_ppm: 50_000,
        }))],
        defaults.clone(),
    )
    .with_health(DEFAULT_HEALTH, fees.clone());
    let fixed = Rules::new(vec![rule(Target::To("ch_5".into()))], defaults)
        .with_health(DEFAULT_HEALTH, fees.clone());
    let metadata = BTreeMap::new();
    let facts = PaymentFacts {
        merchant: "m_1",
        shop: "shop",
        method: Method::WechatNative,
        amount: 1999,
        currency: "CNY",
        metadata: &metadata,
        out_trade_no: "ORD20261125000123",
        china_minute: 600,
    };
    let mut group = c.benchmark_group("adaptive_choice");
    group.bench_function("choose_value_10_candidates", |b| {
        b.iter(|| {
            choose
                .decide(black_box(&facts), &live)
                .map(|d| d.candidates.len())
        })
    });
    group.bench_function("static_to_baseline", |b| {
        b.iter(|| {
            fixed
                .decide(black_box(&facts), &live)
                .map(|d| d.candidates.len())
        })
    });
    // What a first draft would do: score every candidate as a float and sort owned names.
    group.bench_function("naive_float_sort_baseline", |b| {
        b.iter(|| {
            let mut scored: Vec<(String, f64)> = names
                .iter()
                .filter(|n| !live.drained(n))
                .map(|n| {
                    let s = live.health(n);
                    let ratio = s.successes as f64 / s.samples.max(1) as f64;
                    let fee = fees[n].fee(black_box(facts.amount));
                    (n.clone(), ratio * (facts.amount - fee) as f64)
                })
                .filter(|(_, v)| *v > 0.0)
                .collect();
            scored.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
            scored.len()
        })
    });
    group.finish();
}

criterion_group!(benches, bench, bench_choose);
criterion_main!(benches);
