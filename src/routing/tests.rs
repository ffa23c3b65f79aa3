//! The rules engine's unit tests: matching, splits, ownership, and the adaptive choice.

use super::*;

fn rule(name: &str, merchants: Option<&[&str]>, methods: u16, target: Target) -> Rule {
    Rule {
        name: name.into(),
        when: Conditions {
            merchants: merchants.map(|ms| ms.iter().map(|m| m.to_string()).collect()),
            methods,
            ..Conditions::default()
        },
        target,
        fallback: vec![],
        health: None,
    }
}

fn facts<'a>(
    merchant: &'a str,
    method: Method,
    amount: u64,
    md: &'a BTreeMap<String, String>,
    no: &'a str,
) -> PaymentFacts<'a> {
    PaymentFacts {
        merchant,
        shop: "s",
        method,
        amount,
        currency: "CNY",
        metadata: md,
        out_trade_no: no,
        china_minute: 600,
    }
}

fn defaults() -> HashMap<Family, String> {
    HashMap::from([(Family::Wechat, "platform_wechat".to_string())])
}

#[test]
fn first_match_in_file_order_across_index_and_generic() {
    let wechat = Family::Wechat.method_bits();
    let mut amount_rule = rule("small", None, wechat, Target::To("small_ch".into()));
    amount_rule.when.amount_max = Some(100);
    let rules = Rules::new(
        vec![
            amount_rule,
            rule("m1", Some(&["m1"]), wechat, Target::To("m1_ch".into())),
        ],
        defaults(),
    );
    let md = BTreeMap::new();
    let d = rules
        .decide(&facts("m1", Method::WechatJsapi, 50, &md, "o"), &NoSignals)
        .unwrap();
    assert_eq!((d.rule, d.channel().unwrap()), (Some("small"), "small_ch"));
    let d = rules
        .decide(&facts("m1", Method::WechatJsapi, 500, &md, "o"), &NoSignals)
        .unwrap();
    assert_eq!((d.rule, d.channel().unwrap()), (Some("m1"), "m1_ch"));
    let d = rules
        .decide(&facts("m2", Method::WechatJsapi, 500, &md, "o"), &NoSignals)
        .unwrap();
    assert_eq!((d.rule, d.channel().unwrap()), (None, "platform_wechat"));
    let e = rules
        .decide(&facts("m2", Method::AlipayPage, 500, &md, "o"), &NoSignals)
        .unwrap_err();
    assert_eq!(e.family, Family::Alipay);
}

#[test]
fn explain_names_each_skipped_rule() {
    let mut r = rule(
        "vip",
        None,
        Family::Wechat.method_bits(),
        Target::To("a".into()),
    );
    r.when.metadata = vec![("tier".into(), vec!["vip".into()])];
    let rules = Rules::new(vec![r], defaults());
    let md = BTreeMap::from([("tier".to_string(), "gold".to_string())]);
    let e = rules.explain(&facts("m", Method::WechatH5, 1, &md, "o"), &NoSignals);
    assert_eq!(e.skipped.len(), 1);
    assert!(
        e.skipped[0]
            .1
            .contains("metadata.tier \"gold\" not in [vip]"),
        "{:?}",
        e.skipped
    );
    assert!(e.to_text().contains("the family default"));
}

#[test]
fn split_is_deterministic_and_proportional() {
    let rules = Rules::new(
        vec![rule(
            "canary",
            Some(&["m"]),
            Family::Wechat.method_bits(),
            Target::Split {
                choices: vec![("a".into(), 5), ("b".into(), 95)],
                total: 100,
            },
        )],
        defaults(),
    );
    let md = BTreeMap::new();
    let mut a = 0;
    for i in 0..10_000 {
        let no = format!("order-{i}");
        let first = rules
            .decide(&facts("m", Method::WechatNative, 1, &md, &no), &NoSignals)
            .unwrap();
        let again = rules
            .decide(&facts("m", Method::WechatNative, 1, &md, &no), &NoSignals)
            .unwrap();
        assert_eq!(first.channel(), again.channel());
        if first.channel() == Some("a") {
            a += 1;
        }
    }
    assert!((300..=700).contains(&a), "5% split gave {a} of 10000");
}

/// The last line of defence behind config validation: a decision that lands on another
/// merchant's own account, as the chosen channel, a fallback or the default, is no route.
#[test]
fn another_merchants_own_account_is_no_route() {
    let wechat = Family::Wechat.method_bits();
    let mut with_fallback = rule(
        "m2-platform",
        Some(&["m2"]),
        wechat,
        Target::To("platform_wechat".into()),
    );
    with_fallback.fallback = vec!["m1_own".into()];
    let mut small = rule("small", None, wechat, Target::To("m1_own".into()));
    small.when.amount_max = Some(100);
    let rules = Rules::new(
        vec![
            small,
            with_fallback,
            rule("m3", Some(&["m3"]), wechat, Target::To("m3_own".into())),
        ],
        HashMap::from([(Family::Wechat, "m3_own".to_string())]),
    )
    .with_owners(HashMap::from([
        ("m1_own".to_string(), HashSet::from(["m1".to_string()])),
        ("m3_own".to_string(), HashSet::from(["m3".to_string()])),
    ]));
    let md = BTreeMap::new();
    let refused = |merchant: &str, amount: u64| {
        rules
            .decide(
                &facts(merchant, Method::WechatNative, amount, &md, "o"),
                &NoSignals,
            )
            .unwrap_err()
            .not_owner
    };
    // The owner itself is served, by the rule and by the default.
    let d = rules
        .decide(&facts("m1", Method::WechatNative, 50, &md, "o"), &NoSignals)
        .unwrap();
    assert_eq!(d.channel(), Some("m1_own"));
    let d = rules
        .decide(
            &facts("m3", Method::WechatNative, 500, &md, "o"),
            &NoSignals,
        )
        .unwrap();
    assert_eq!(d.channel(), Some("m3_own"));
    assert_eq!(refused("m9", 50), Some("m1_own".to_string()));
    assert_eq!(
        refused("m2", 500),
        Some("m1_own".to_string()),
        "a fallback counts"
    );
    assert_eq!(
        refused("m9", 500),
        Some("m3_own".to_string()),
        "the default counts"
    );
    let e = rules
        .decide(&facts("m9", Method::WechatNative, 50, &md, "o"), &NoSignals)
        .unwrap_err();
    // What the shop reads does not name the other merchant's channel.
    assert!(!e.to_string().contains("m1_own"), "{e}");
    let text = rules
        .explain(&facts("m9", Method::WechatNative, 50, &md, "o"), &NoSignals)
        .to_text();
    assert!(
        text.contains("→ no_route") && text.contains("refused channel \"m1_own\""),
        "{text}"
    );
}

/// A snapshot for tests: each channel's sample and the drained ones.
struct Live<'a>(HashMap<&'a str, Sample>, HashSet<&'a str>);

impl Signals for Live<'_> {
    fn health(&self, c: &str) -> Sample {
        self.0.get(c).copied().unwrap_or_default()
    }
    fn drained(&self, c: &str) -> bool {
        self.1.contains(c)
    }
}

fn sick() -> Sample {
    Sample {
        successes: 2,
        samples: 40,
    }
}

#[test]
fn drained_and_eliminated_candidates_are_passed_over_in_order() {
    let wechat = Family::Wechat.method_bits();
    let mut r = rule("own", Some(&["m"]), wechat, Target::To("own".into()));
    r.fallback = vec!["backup".into(), "platform".into()];
    let rules = Rules::new(vec![r], defaults());
    let md = BTreeMap::new();
    let f = |no: &'static str| facts("m", Method::WechatNative, 1000, &md, no);
    fn pick<'r>(d: &Decision<'r>) -> Vec<&'r str> {
        d.candidates.iter().map(|c| c.channel).collect()
    }

    let live = Live(HashMap::new(), HashSet::from(["own"]));
    let d = rules.decide(&f("o-1"), &live).unwrap();
    assert_eq!(pick(&d), ["backup", "platform"]);
    assert_eq!(
        d.skipped,
        [Skip {
            channel: "own",
            reason: SkipReason::Drained
        }]
    );

    // Eliminated: skipped but for the probe share, which is stable per order.
    let live = Live(HashMap::from([("own", sick())]), HashSet::new());
    let mut probed = 0;
    for i in 0..2000 {
        let no = format!("o-{i}");
        let d = rules
            .decide(&facts("m", Method::WechatNative, 1000, &md, &no), &live)
            .unwrap();
        if d.candidates[0].channel == "own" {
            assert_eq!(d.candidates[0].why, Why::Probe);
            probed += 1;
        } else {
            assert_eq!(d.skipped[0].reason, SkipReason::Eliminated);
            assert_eq!(d.candidates[0].why, Why::Fallback);
        }
    }
    assert!((50..=150).contains(&probed), "5% of 2000 probed: {probed}");

    // All eliminated, one drained: the best eliminated is still tried, the drained never.
    let live = Live(
        HashMap::from([
            ("own", sick()),
            (
                "backup",
                Sample {
                    successes: 10,
                    samples: 40,
                },
            ),
        ]),
        HashSet::from(["platform"]),
    );
    let no_probe = (0..1000)
        .map(|i| format!("n-{i}"))
        .find(|no| {
            let h = split_hash("m", no);
            adaptive::roll(h, "own") >= DEFAULT_HEALTH.probe_ppm
                && adaptive::roll(h, "backup") >= DEFAULT_HEALTH.probe_ppm
        })
        .unwrap();
    let d = rules
        .decide(
            &facts("m", Method::WechatNative, 1000, &md, &no_probe),
            &live,
        )
        .unwrap();
    assert_eq!(
        d.candidates,
        [Pick {
            channel: "backup",
            why: Why::LastResort
        }]
    );
    assert_eq!(d.skipped.len(), 2, "{:?}", d.skipped);
}

/// Under `choose` an eliminated candidate ranks last; its probe share must still go to it
/// first, or it would never be sent anything and never come back.
#[test]
fn a_probe_goes_first_whatever_its_rank() {
    let r = rule(
        "pick",
        Some(&["m"]),
        Family::Wechat.method_bits(),
        Target::Choose(Choose {
            from: vec!["own".into(), "platform".into()],
            by: By::Value,
            explore_ppm: 0,
        }),
    );
    let rules = Rules::new(vec![r], defaults());
    let live = Live(HashMap::from([("own", sick())]), HashSet::new());
    let md = BTreeMap::new();
    let mut probed = 0;
    for i in 0..2000 {
        let no = format!("o-{i}");
        let d = rules
            .decide(&facts("m", Method::WechatNative, 1000, &md, &no), &live)
            .unwrap();
        if d.candidates.iter().any(|c| c.why == Why::Probe) {
            assert_eq!(
                d.candidates[0],
                Pick {
                    channel: "own",
                    why: Why::Probe
                }
            );
            probed += 1;
        } else {
            assert_eq!(d.channel(), Some("platform"));
        }
    }
    assert!((50..=150).contains(&probed), "5% of 2000: {probed}");
}

#[test]
fn a_split_fails_over_to_its_other_choices_before_its_fallbacks() {
    let mut r = rule(
        "canary",
        Some(&["m"]),
        Family::Wechat.method_bits(),
        Target::Split {
            choices: vec![("a".into(), 50), ("b".into(), 50)],
            total: 100,
        },
    );
    r.fallback = vec!["c".into(), "a".into()];
    let rules = Rules::new(vec![r], defaults());
    let md = BTreeMap::new();
    let d = rules
        .decide(&facts("m", Method::WechatNative, 1, &md, "o"), &NoSignals)
        .unwrap();
    let order: Vec<&str> = d.candidates.iter().map(|c| c.channel).collect();
    assert_eq!(order.len(), 3, "each channel once: {order:?}");
    assert_eq!(order[2], "c");
    let live = Live(HashMap::new(), HashSet::from([order[0]]));
    let d = rules
        .decide(&facts("m", Method::WechatNative, 1, &md, "o"), &live)
        .unwrap();
    assert_eq!(
        d.channel(),
        Some(order[1]),
        "the other split choice takes it"
    );
}

#[test]
fn choose_by_cost_and_value_with_fees() {
    let r = rule(
        "pick",
        Some(&["m"]),
        Family::Wechat.method_bits(),
        Target::Choose(Choose {
            from: vec!["dear".into(), "cheap".into()],
            by: By::Cost,
            explore_ppm: 0,
        }),
    );
    let mut by_value = r.clone();
    by_value.target = Target::Choose(Choose {
        from: vec!["dear".into(), "cheap".into()],
        by: By::Value,
        explore_ppm: 0,
    });
    let fees = HashMap::from([
        ("dear".to_string(), FeeRate { ppm: 6000 }),
        ("cheap".to_string(), FeeRate { ppm: 3800 }),
    ]);
    let md = BTreeMap::new();
    let f = facts("m", Method::WechatNative, 10_000, &md, "o");
    let cost = Rules::new(vec![r], defaults()).with_health(DEFAULT_HEALTH, fees.clone());
    assert_eq!(
        cost.decide(&f, &NoSignals).unwrap().channel(),
        Some("cheap")
    );
    let value = Rules::new(vec![by_value], defaults()).with_health(DEFAULT_HEALTH, fees);
    assert_eq!(
        value.decide(&f, &NoSignals).unwrap().channel(),
        Some("cheap")
    );
    // The cheap one fails 30% of the time: 70% × 9962 < 100% × 9940.
    let live = Live(
        HashMap::from([
            (
                "cheap",
                Sample {
                    successes: 28,
                    samples: 40,
                },
            ),
            (
                "dear",
                Sample {
                    successes: 40,
                    samples: 40,
                },
            ),
        ]),
        HashSet::new(),
    );
    let d = value.decide(&f, &live).unwrap();
    assert_eq!(d.channel(), Some("dear"));
    let ex = value.explain(&f, &live);
    assert_eq!(ex.by, Some(By::Value));
    let cheap = ex.candidates.iter().find(|c| c.channel == "cheap").unwrap();
    assert_eq!(
        (cheap.fee, cheap.value, cheap.verdict),
        (38, 6973, Ok((1, Why::Chosen)))
    );
    assert!(
        ex.to_text().contains("candidate \"dear\": chosen (chosen)"),
        "{}",
        ex.to_text()
    );
}

#[test]
fn hours_wrap_midnight() {
    let h = HoursRange::parse("22:00-06:00").unwrap();
    assert!(h.contains(23 * 60));
    assert!(h.contains(0));
    assert!(!h.contains(12 * 60));
    let day = HoursRange::parse("08:00-24:00").unwrap();
    assert!(day.contains(23 * 60 + 59) && !day.contains(7 * 60));
    assert!(HoursRange::parse("8:00-23:00").is_err());
    assert!(HoursRange::parse("08:00-08:00").is_err());
    assert!(HoursRange::parse("25:00-08:00").is_err());
}
