//! The sandbox's trade statements over its socket (issue 19): payments made and refunded
//! through payroute, then each provider's statement API called directly with signed
//! requests and the file checked by hand (payroute's own parser is not used here).

use crate::support;

use std::io::{Cursor, Read};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use payroute::channel::keys::{RsaSigner, RsaVerifier};
use payroute::channel::wechatpay::sign as wx;
use serde_json::{json, Value};
use support::{alipay_call, key, within, Harness};

const WX_HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";
const WX_SUMMARY_HEADER: &str =
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额";
const BILL: &str = "alipay.data.dataservice.bill.downloadurl.query";

/// A WeChat Pay account of the test config: (mchid, certificate serial, key file).
type Account = (&'static str, &'static str, &'static str);
/// m_1001's own account (direct, fee_rate 0.0038).
const M1001: Account = (
    "1900000109",
    "3775B6A45ACD588826D15E583A95F5DD",
    "m1001_apiclient_key.pem",
);
/// The platform (partner, fee_rate 0.006).
const PLATFORM: Account = (
    "1900000100",
    "5157F09EFDC096DE15EBE81A47057A72",
    "platform_apiclient_key.pem",
);
/// The platform's Alipay app (ISV) and m_2002's own app (direct), both fee_rate 0.006.
const PLATFORM_ALIPAY: (&str, &str) = ("2021000000000001", "platform_alipay_app_key.pem");
const M2002_ALIPAY: (&str, &str) = ("2021000000002002", "m2002_alipay_app_key.pem");
const TOKEN_4004: &str = "tok_m_4004_TEST_ONLY";
const SELLER_4004: &str = "2088000000004004";

fn signer(keyfile: &str) -> RsaSigner {
    RsaSigner::from_text(&std::fs::read_to_string(key(keyfile)).unwrap()).unwrap()
}

fn verifier(keyfile: &str) -> RsaVerifier {
    RsaVerifier::from_text(&std::fs::read_to_string(key(keyfile)).unwrap()).unwrap()
}

/// Today in China (`YYYY-MM-DD`).
fn china_today() -> String {
    let now =
        time::OffsetDateTime::now_utc().to_offset(time::UtcOffset::from_hms(8, 0, 0).unwrap());
    format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    )
}

fn tomorrow_in_china() -> String {
    let t = time::OffsetDateTime::now_utc().to_offset(time::UtcOffset::from_hms(8, 0, 0).unwrap())
        + time::Duration::days(1);
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

fn sha1_hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An answer with its raw bytes (files are binary).
struct Raw {
    status: u16,
    headers: http::HeaderMap,
    bytes: Bytes,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }
}

/// A GET of `url` with `headers`, its body kept as bytes; bounded by the tests' deadline.
async fn get(url: &str, headers: &[(&str, &str)]) -> Raw {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder().method(Method::GET).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    within(&format!("an answer from {url}"), async {
        let resp = client.request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        Raw {
            status: parts.status.as_u16(),
            headers: parts.headers,
            bytes: body.collect().await.unwrap().to_bytes(),
        }
    })
    .await
}

/// A signed WeChat Pay `GET {path}` at the sandbox as `account`.
async fn wechat_get(h: &Harness, (mchid, serial, keyfile): Account, path: &str) -> Raw {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let nonce = wx::nonce();
    let auth = wx::authorization(
        &signer(keyfile),
        mchid,
        serial,
        "GET",
        path,
        ts,
        &nonce,
        b"",
    );
    get(
        &format!("{}{path}", h.sandbox_url),
        &[("authorization", &auth), ("accept", "application/json")],
    )
    .await
}

/// `GET /v3/bill/tradebill?{query}` as `account`; the answer's signature checked.
async fn tradebill(h: &Harness, account: Account, query: &str) -> (u16, Value) {
    let r = wechat_get(h, account, &format!("/v3/bill/tradebill?{query}")).await;
    let header = |n: &str| r.headers[n].to_str().unwrap().to_string();
    let msg = wx::response_message(
        &header("wechatpay-timestamp"),
        &header("wechatpay-nonce"),
        &r.bytes,
    );
    assert!(
        verifier("wechatpay_pub_key.pem").verify_b64(&msg, &header("wechatpay-signature")),
        "the answer is signed: {:?}",
        r.bytes
    );
    (r.status, r.json())
}

/// The bill's `download_url` fetched with a signed GET as `account`: its bytes, after
/// checking the bill's SHA-1 is theirs.
async fn download_checked(h: &Harness, account: Account, bill: &Value) -> Bytes {
    let url = bill["download_url"].as_str().expect("a download_url");
    let path = url
        .strip_prefix(&h.sandbox_url)
        .unwrap_or_else(|| panic!("{url} points back at the sandbox"));
    assert!(path.starts_with("/v3/billdownload/file?token="), "{path}");
    let r = wechat_get(h, account, path).await;
    assert_eq!(r.status, 200, "{:?}", r.bytes);
    assert_eq!(bill["hash_type"], "SHA1");
    assert_eq!(
        bill["hash_value"],
        sha1_hex(&r.bytes),
        "the SHA-1 of the bytes served"
    );
    r.bytes
}

/// The China day (`YYYY-MM-DD`) the sandbox recorded `no` paid on.
async fn paid_day(h: &Harness, no: &str) -> String {
    let orders = h.sandbox_orders(no).await;
    let t = orders[0]["success_time"]
        .as_str()
        .or_else(|| orders[0]["send_pay_date"].as_str())
        .unwrap_or_else(|| panic!("{no} is paid: {orders:?}"));
    // RFC 3339 in +08:00 (WeChat Pay) or `YYYY-MM-DD HH:MM:SS` China time (Alipay).
    t[..10].to_string()
}

async fn refund(h: &Harness, merchant: &str, no: &str, refund_no: &str, amount: u64) {
    let r = h
        .refund(&json!({
            "merchant_id": merchant, "out_trade_no": no, "out_refund_no": refund_no,
            "amount": amount,
        }))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

#[tokio::test]
async fn wechat_trade_bill_lists_the_accounts_payments_and_refunds_with_their_hash() {
    let h = Harness::start().await;
    let before = china_today();
    // m_1001 on its own account (fee 0.38%), m_4004 on the platform's (as sub-merchant).
    h.paid("m_1001", "stw-1", "wechat_native", 1999).await;
    refund(&h, "m_1001", "stw-1", "stw-1-r1", 500).await;
    h.paid("m_4004", "stw-other", "wechat_native", 300).await;
    let same_day = before == china_today();
    let day = paid_day(&h, "stw-1").await;

    let (status, bill) = tradebill(&h, M1001, &format!("bill_date={day}&bill_type=ALL")).await;
    assert_eq!(status, 200, "{bill}");
    let bytes = download_checked(&h, M1001, &bill).await;
    let text = String::from_utf8(bytes.to_vec()).expect("UTF-8");
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(lines[0], WX_HEADER, "{text}");
    let payment = lines
        .iter()
        .find(|l| l.contains(",`stw-1,`") && l.contains(",`SUCCESS,`"))
        .unwrap_or_else(|| panic!("a payment row: {text}"));
    assert!(payment.starts_with(&format!("`{day} ")), "{payment}");
    assert!(
        payment.contains(",`wx2421b1c4370ec43b,`1900000109,`0,`,`"),
        "{payment}"
    );
    assert!(
        payment.contains(",`CNY,`19.99,`0.00,`0,`0,`0.00,`0.00,`,`,`Test mug,`"),
        "{payment}"
    );
    // 19.99 at 0.38%: 0.075962 → 0.08.
    assert!(
        payment.ends_with(",`0.08,`0.38%,`19.99,`0.00,`"),
        "{payment}"
    );
    assert!(
        !text.contains("stw-other"),
        "another account's order: {text}"
    );
    if same_day {
        assert_eq!(lines.len(), 6, "two rows: {text}");
        let refund = lines
            .iter()
            .find(|l| l.contains(",`REFUND,`"))
            .unwrap_or_else(|| panic!("a refund row: {text}"));
        assert!(refund.contains(",`stw-1,`"), "{refund}");
        assert!(refund.contains(",`CNY,`0.00,`0.00,`"), "{refund}");
        assert!(
            refund.contains(",`stw-1-r1,`5.00,`0.00,`ORIGINAL,`SUCCESS,`"),
            "{refund}"
        );
        assert!(refund.ends_with(",`-0.02,`0.38%,`0.00,`5.00,`"), "{refund}");
        assert_eq!(lines[3], WX_SUMMARY_HEADER);
        assert_eq!(lines[4], "`2,`19.99,`5.00,`0.00,`0.06,`19.99,`5.00");
    } else {
        eprintln!("the refund fell on the next China day: its row is not checked");
    }

    // The same bill gzipped: the hash is the gzip's, and it decodes to the same text.
    let (status, gz_bill) = tradebill(&h, M1001, &format!("bill_date={day}&tar_type=GZIP")).await;
    assert_eq!(status, 200, "{gz_bill}");
    let gz = download_checked(&h, M1001, &gz_bill).await;
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut unzipped)
        .expect("gzip");
    assert_eq!(unzipped, text);

    // The platform's bill for m_4004's sub_mchid: its order, not m_1001's own.
    let (status, partner) = tradebill(
        &h,
        PLATFORM,
        &format!("bill_date={day}&sub_mchid=1900000409"),
    )
    .await;
    assert_eq!(status, 200, "{partner}");
    let bytes = download_checked(&h, PLATFORM, &partner).await;
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(text.contains(",`1900000100,`1900000409,`,`"), "{text}");
    assert!(
        text.contains(",`stw-other,`") && !text.contains("stw-1"),
        "{text}"
    );
    // 3.00 at 0.6%: 0.018 → 0.02.
    assert!(text.contains(",`0.02,`0.6%,`3.00,`0.00,`\r\n"), "{text}");

    // m_1001 may not download the platform's file.
    let path = partner["download_url"].as_str().unwrap();
    let r = wechat_get(&h, M1001, path.strip_prefix(&h.sandbox_url).unwrap()).await;
    assert_eq!(r.status, 400, "{:?}", r.bytes);

    // A day after today is refused; a bad date too.
    let (status, v) = tradebill(&h, M1001, &format!("bill_date={}", tomorrow_in_china())).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("NO_STATEMENT_EXIST")),
        "{v}"
    );
    let (status, v) = tradebill(&h, M1001, "bill_date=2026-13-01").await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("PARAM_ERROR")),
        "{v}"
    );

    // corrupt_statements: the hash no longer matches the bytes.
    h.faults(json!({ "corrupt_statements": true })).await;
    let (status, bad) = tradebill(&h, M1001, &format!("bill_date={day}")).await;
    assert_eq!(status, 200, "{bad}");
    let r = wechat_get(
        &h,
        M1001,
        bad["download_url"]
            .as_str()
            .unwrap()
            .strip_prefix(&h.sandbox_url)
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.bytes, Bytes::from(text_of(&h, M1001, &day).await));
    assert_ne!(bad["hash_value"], sha1_hex(&r.bytes));
    h.shutdown().await;
}

/// The plain bill of `day` for `account`, fetched with the faults off.
async fn text_of(h: &Harness, account: Account, day: &str) -> Vec<u8> {
    h.faults(json!({})).await;
    let (_, bill) = tradebill(h, account, &format!("bill_date={day}")).await;
    download_checked(h, account, &bill).await.to_vec()
}

/// The statement of `day` for `app` (with `token`): the zip's bytes.
async fn alipay_zip(h: &Harness, app: (&str, &str), token: Option<&str>, day: &str) -> Bytes {
    let biz = json!({ "bill_type": "trade", "bill_date": day });
    let v = alipay_call(h, app, token, BILL, &biz).await;
    assert_eq!(
        (v["code"].as_str(), v["msg"].as_str()),
        (Some("10000"), Some("Success")),
        "{v}"
    );
    let url = v["bill_download_url"]
        .as_str()
        .expect("a bill_download_url");
    assert!(
        url.starts_with(&format!(
            "{}/sandbox/alipay/bill/download?token=",
            h.sandbox_url
        )),
        "{url}"
    );
    let r = get(url, &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.bytes);
    r.bytes
}

/// The zip's files as (name, text), both decoded from GBK.
fn unzip(bytes: &[u8]) -> Vec<(String, String)> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes.to_vec())).expect("a zip");
    (0..archive.len())
        .map(|i| {
            let mut f = archive.by_index(i).unwrap();
            let (name, _, bad) = encoding_rs::GBK.decode(f.name_raw());
            assert!(!bad, "a GBK name");
            let name = name.into_owned();
            let mut raw = Vec::new();
            f.read_to_end(&mut raw).unwrap();
            let (text, _, bad) = encoding_rs::GBK.decode(&raw);
            assert!(!bad, "GBK text");
            (name, text.into_owned())
        })
        .collect()
}

#[tokio::test]
async fn alipay_statement_is_a_zip_of_gbk_files_of_the_sellers_trades() {
    let h = Harness::start_alipay(support::MIXED_RULES).await;
    let before = china_today();
    // m_4004 through the platform's ISV app (its seller), m_2002 on its own app, m_1001
    // through the platform for another seller.
    h.paid("m_4004", "sta-1", "alipay_precreate", 1999).await;
    refund(&h, "m_4004", "sta-1", "sta-1-r1", 500).await;
    h.paid("m_2002", "sta-own", "alipay_precreate", 800).await;
    h.paid("m_1001", "sta-1001", "alipay_precreate", 100).await;
    let same_day = before == china_today();
    let day = paid_day(&h, "sta-1").await;
    let compact = day.replace('-', "");

    let zip = alipay_zip(&h, PLATFORM_ALIPAY, Some(TOKEN_4004), &day).await;
    let files = unzip(&zip);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("{SELLER_4004}_{compact}_业务明细.csv"),
            format!("{SELLER_4004}_{compact}_业务明细(汇总).csv"),
        ]
    );
    let detail = &files[0].1;
    let lines: Vec<&str> = detail.split("\r\n").collect();
    assert_eq!(lines[0], "#支付宝业务明细查询");
    assert_eq!(lines[1], format!("#账号：[{SELLER_4004}]"));
    assert!(lines[2].starts_with("#起始日期：["), "{}", lines[2]);
    assert!(lines[3].contains("业务明细列表"), "{}", lines[3]);
    assert!(
        lines[4].starts_with("支付宝交易号,商户订单号,业务类型,"),
        "{}",
        lines[4]
    );
    let fields = |l: &str| -> Vec<String> { l.split(',').map(|f| f.trim().to_string()).collect() };
    let payment = lines
        .iter()
        .find(|l| l.contains("sta-1\t,交易\t,"))
        .unwrap_or_else(|| panic!("a payment row: {detail}"));
    let f = fields(payment);
    assert_eq!(f.len(), 25, "{payment}");
    assert_eq!(
        (f[1].as_str(), f[2].as_str(), f[3].as_str()),
        ("sta-1", "交易", "Test mug")
    );
    assert!(f[5].starts_with(&day), "paid that day: {payment}");
    // 订单金额, 商家实收; 服务费: 19.99 at 0.6% = 0.11994 → -0.12.
    assert_eq!(
        (f[11].as_str(), f[12].as_str(), f[22].as_str()),
        ("19.99", "19.99", "-0.12")
    );
    assert!(
        detail.contains("#交易合计：1笔，商家实收：19.99元，商家优惠：0.00元\r\n"),
        "{detail}"
    );
    if same_day {
        let refund = lines
            .iter()
            .find(|l| l.contains("\t,退款\t,"))
            .unwrap_or_else(|| panic!("a refund row: {detail}"));
        let f = fields(refund);
        assert_eq!(
            (f[1].as_str(), f[11].as_str(), f[12].as_str()),
            ("sta-1", "19.99", "-5.00")
        );
        // 5.00 at 0.6%: 0.03 returned.
        assert_eq!((f[21].as_str(), f[22].as_str()), ("sta-1-r1", "0.03"));
        assert!(
            detail.contains("#退款合计：1笔，商家实收：-5.00元，商家优惠：0.00元\r\n"),
            "{detail}"
        );
    }
    assert!(
        lines.iter().any(|l| l.starts_with("#导出时间：[")),
        "{detail}"
    );
    assert!(
        !detail.contains("sta-own") && !detail.contains("sta-1001"),
        "other sellers' trades: {detail}"
    );
    assert!(
        files[1].1.starts_with("#支付宝业务汇总查询\r\n"),
        "{}",
        files[1].1
    );

    // m_2002's own app, direct: its trade only, under its (made-up) seller id.
    let own = unzip(&alipay_zip(&h, M2002_ALIPAY, None, &day).await);
    assert!(own[0].1.contains("sta-own\t,交易\t,"), "{}", own[0].1);
    assert!(!own[0].1.contains("sta-1\t"), "{}", own[0].1);

    // A future day is refused.
    let biz = json!({ "bill_type": "trade", "bill_date": tomorrow_in_china() });
    let v = alipay_call(&h, PLATFORM_ALIPAY, Some(TOKEN_4004), BILL, &biz).await;
    assert_eq!(
        (v["code"].as_str(), v["sub_code"].as_str()),
        (Some("40004"), Some("isp.bill_not_exist")),
        "{v}"
    );

    // corrupt_statements: a truncated zip.
    h.faults(json!({ "corrupt_statements": true })).await;
    let bad = alipay_zip(&h, PLATFORM_ALIPAY, Some(TOKEN_4004), &day).await;
    assert!(bad.len() < zip.len());
    assert!(
        zip::ZipArchive::new(Cursor::new(bad.to_vec())).is_err(),
        "does not open"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn statement_fee_rate_overrides_the_channels_and_bad_rates_are_refused() {
    let h = Harness::start().await;
    h.paid("m_1001", "stf-1", "wechat_native", 1000).await;
    let day = paid_day(&h, "stf-1").await;
    h.faults(json!({ "statement_fee_rate": "0.006" })).await;
    let (_, bill) = tradebill(&h, M1001, &format!("bill_date={day}&bill_type=SUCCESS")).await;
    let text = String::from_utf8(download_checked(&h, M1001, &bill).await.to_vec()).unwrap();
    // 10.00 at 0.6% (not the channel's 0.38%).
    assert!(
        text.contains(",`stf-1,`") && text.contains(",`0.06,`0.6%,`10.00,`0.00,`\r\n"),
        "{text}"
    );
    let r = h
        .send(
            Method::POST,
            &format!("{}/sandbox/faults", h.sandbox_url),
            &[],
            &json!({ "statement_fee_rate": "0.6%" }).to_string(),
        )
        .await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (400, Some("PARAM_ERROR")),
        "{}",
        r.text
    );
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .starts_with("statement_fee_rate: "),
        "{}",
        r.text
    );
    h.shutdown().await;
}
