//! RSA2 (SHA256withRSA, 2048-bit) signing: the per-request cost of talking to a provider.
//! `rsa2048_sign` is the raw signature (compare with `openssl speed rsa2048`, the physical
//! limit on this machine); `alipay_sign_params` adds building the sorted string to sign;
//! `wechat_authorization` builds a whole WeChat Pay Authorization header.
//!
//! Run: `cargo bench --bench signing`. `SIGNING_CPU=1 cargo bench --bench signing` instead
//! prints the CPU time (this thread's, from `/proc/thread-self/schedstat`) of one RSA-2048
//! signature and one verification: the floor `benches/load.sh` compares payroute's CPU per
//! request with. Criterion's figures are wall-clock, which on a shared machine include the
//! time the bench waited for a core; CPU time does not.

use std::collections::BTreeMap;

use criterion::{black_box, criterion_group, Criterion};
use payroute::channel::alipay::sign::sign_params;
use payroute::channel::keys::RsaSigner;
use payroute::channel::wechatpay::sign::authorization;

fn bench(c: &mut Criterion) {
    let pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/sandbox/platform_alipay_app_key.pem"
    ))
    .unwrap();
    let signer = RsaSigner::from_text(&pem).unwrap();
    let params: BTreeMap<String, String> = [
        ("app_id", "2021000000000001"),
        ("method", "alipay.trade.precreate"),
        ("format", "JSON"),
        ("charset", "utf-8"),
        ("sign_type", "RSA2"),
        ("timestamp", "2026-11-25 20:00:00"),
        ("version", "1.0"),
        ("notify_url", "https://pay.example.com/notify/platform_alipay"),
        ("app_auth_token", "202611BB8a4f2b3c9d0e1f2a3b4c5d6e"),
        ("biz_content", r#"{"out_trade_no":"ORD20261125000123","total_amount":"19.99","subject":"Ceramic mug 陶瓷杯","product_code":"FACE_TO_FACE_PAYMENT","time_expire":"2026-11-25 22:00:00"}"#),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let message = payroute::channel::alipay::sign::string_to_sign(&params);

    let mut g = c.benchmark_group("rsa2");
    g.bench_function("rsa2048_sign", |b| {
        b.iter(|| signer.sign_b64(black_box(message.as_bytes())))
    });
    g.bench_function("alipay_sign_params", |b| {
        b.iter(|| {
            let mut p = params.clone();
            sign_params(black_box(&mut p), &signer);
            p.len()
        })
    });
    let body = br#"{"appid":"wx2421b1c4370ec43b","mchid":"1900000109","description":"Ceramic mug","out_trade_no":"ORD20261125000123","time_expire":"2026-11-25T22:00:00+08:00","notify_url":"https://pay.example.com/notify/m1001_wechat","amount":{"total":1999,"currency":"CNY"}}"#;
    g.bench_function("wechat_authorization", |b| {
        b.iter(|| {
            authorization(
                &signer,
                "1900000109",
                "3775B6A45ACD588826D15E583A95F5DD",
                "POST",
                "/v3/pay/transactions/native",
                1_795_000_000,
                "5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
                black_box(body),
            )
        })
    });
    let verifier = signer.verifier();
    let sig = signer.sign_b64(message.as_bytes());
    g.bench_function("rsa2048_verify", |b| {
        b.iter(|| verifier.verify_b64(black_box(message.as_bytes()), &sig))
    });
    g.finish();
}

/// Nanoseconds this thread has run on a CPU.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("/proc/thread-self/schedstat (Linux)")
}

/// CPU µs per call of `f`, over about `secs` seconds of calls.
fn cpu_us_per_call(secs: f64, mut f: impl FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let (wall, cpu) = (std::time::Instant::now(), thread_cpu_ns());
    let mut n = 0u64;
    while wall.elapsed().as_secs_f64() < secs {
        for _ in 0..20 {
            f();
        }
        n += 20;
    }
    (thread_cpu_ns() - cpu) as f64 / 1e3 / n as f64
}

fn cpu_figures() {
    let pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/sandbox/platform_alipay_app_key.pem"
    ))
    .unwrap();
    let signer = RsaSigner::from_text(&pem).unwrap();
    let verifier = signer.verifier();
    let message = b"GET\n/v3/pay/transactions/out-trade-no/ORD20261125000123?mchid=1900000109\n1795000000\n5K8264ILTKCH16CQ2502SI8ZNMTM67VS\n\n";
    let sig = signer.sign_b64(message);
    let sign = cpu_us_per_call(3.0, || {
        black_box(signer.sign_b64(black_box(message)));
    });
    let verify = cpu_us_per_call(2.0, || {
        black_box(verifier.verify_b64(black_box(message), &sig));
    });
    println!("rsa2048_sign_cpu_us {sign:.1}");
    println!("rsa2048_verify_cpu_us {verify:.1}");
}

criterion_group!(benches, bench);

fn main() {
    if std::env::var_os("SIGNING_CPU").is_some() {
        return cpu_figures();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
