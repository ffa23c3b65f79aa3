//! RSA2 (SHA256withRSA, 2048-bit) signing: the per-request cost of talking to a provider.
//! `rsa2048_sign` is the raw signature (compare with `openssl speed rsa2048`, the physical
//! limit on this machine); `alipay_sign_params` adds building the sorted string to sign;
//! `wechat_authorization` builds a whole WeChat Pay Authorization header.
//!
//! Run: `cargo bench --bench signing`.

use std::collections::BTreeMap;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
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

criterion_group!(benches, bench);
criterion_main!(benches);
