//! Provider notifications, end to end: how many verified, durably stored WeChat Pay
//! `TRANSACTION.SUCCESS` notifications per second this machine takes (issue target: ≥ 1,000/s,
//! decrypt included).
//!
//! A plain `fn main()` load driver, not criterion: the figure is a throughput through real
//! sockets (HTTP/1.1 parse, RSA verify, AES-GCM decrypt, order lookup, compare-and-set with the
//! shop event in one SQLite transaction, `synchronous=FULL`), with C connections in flight at
//! once. Criterion times one closure at a time and repeats it; a notification can be applied
//! only once, and one-at-a-time would measure latency, not what concurrent writers get.
//!
//! What it does, per store location (a temp dir on the build disk, then one on `/dev/shm`, to
//! show what the fsync costs):
//! 1. writes a config with one WeChat Pay direct channel, `m1001_wechat` (mchid 1900000109,
//!    the sandbox keys), the store in the temp dir, and a shop whose webhook is a tiny local
//!    receiver answering 200 — so the outbox delivers each event once, writing its
//!    delivery to the store while notifications arrive, as in production;
//! 2. seeds N pending payments bound to m1001_wechat through `SqliteStore::insert_payment`,
//!    each with its first reconciliation check scheduled one minute out, as the reconciler
//!    would (so it does not query a provider during the run). Seeding runs on `/dev/shm` and
//!    the file is copied into place, which keeps N × 2 fsyncs out of the set-up time;
//! 3. builds N signed + encrypted notifications (not timed);
//! 4. starts the proxy in-process (`payroute::app::start`), fires the notifications at
//!    `POST /notify/m1001_wechat` from C connections, times all N, checks every answer is 204;
//! 5. stops the proxy and checks in the file that all N payments are `succeeded` and N
//!    `payment.succeeded` events were written.
//!
//! CPU per notification is the process's utime + stime over the run (`/proc/self/stat`): the
//! driver (client, HTTP) runs in the same process, so it is an upper bound for the proxy.
//!
//! Run: `cargo bench --bench notify`. Knobs: `NOTIFY_BENCH_N` (5000), `NOTIFY_BENCH_C` (32),
//! `NOTIFY_BENCH_WEBHOOK=closed` (point the webhook at a closed port instead: deliveries fail
//! and are retried on the default 15 s schedule, one failed attempt written per event),
//! `NOTIFY_BENCH_ONLY=disk|shm` (one location only).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method as HttpMethod, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use payroute::app::{Listeners, Running};
use payroute::channel::keys::RsaSigner;
use payroute::channel::wechatpay::sign;
use payroute::config::Config;
use payroute::domain::{Account, Method, PaymentStatus};
use payroute::store::sqlite::SqliteStore;
use payroute::store::{Ledger, PaymentRecord, Schedule};
use serde_json::json;
use tokio::net::TcpListener;

const CHANNEL: &str = "m1001_wechat";
const MCHID: &str = "1900000109";
const APPID: &str = "wx2421b1c4370ec43b";
const MERCHANT: &str = "m_1001";
const SHOP: &str = "test-shop";
const AMOUNT: u64 = 1999;
/// The TEST-ONLY APIv3 key of m1001 (as tests/support `apiv3_key`): 32 bytes.
const APIV3_KEY: &str = "apiv3-1900000109-TEST-ONLY000000";

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn key(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/sandbox")
        .join(name)
        .display()
        .to_string()
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn out_trade_no(i: usize) -> String {
    format!("NB{:010}", i)
}

fn config_yaml(db: &Path, api_port: u16, webhook_url: &str) -> String {
    format!(
        r#"
server:
  listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:0
  public_base_url: http://127.0.0.1:{api_port}
  max_body_bytes: 65536
  drain_timeout: 5s
admin: {{ token: bench-admin-token-0123456789 }}
store: {{ kind: sqlite, path: {db} }}
shops:
  - id: {SHOP}
    api_key: bench-shop-key-0123456789
    merchants: [{MERCHANT}]
    webhook: {{ url: "{webhook_url}", secret: bench-webhook-secret-0123456789 }}
merchants:
  {MERCHANT}: {{ wechat_sub_mchid: "1900000109" }}
channels:
  {CHANNEL}:
    kind: wechatpay_v3
    mode: direct
    merchants: [{MERCHANT}]
    base_url: http://127.0.0.1:9
    mchid: "{MCHID}"
    appid: {APPID}
    serial_no: 3775B6A45ACD588826D15E583A95F5DD
    private_key: file:{private_key}
    wechatpay_public_key: file:{public_key}
    wechatpay_public_key_id: PUB_KEY_ID_SANDBOX_TEST_ONLY
    apiv3_key: {APIV3_KEY}
    fee_rate: 0.0038
    timeout: 2s
routing:
  rules:
    - name: m1001-own-wechat
      when: {{ merchant: [{MERCHANT}], family: wechat }}
      to: {CHANNEL}
  default: {{ wechat: {CHANNEL} }}
"#,
        db = db.display(),
        private_key = key("m1001_apiclient_key.pem"),
        public_key = key("wechatpay_pub_key.pem"),
    )
}

/// A pending WeChat Native order as `PaymentService::create` leaves it once the channel
/// answered: bound to m1001_wechat's account, its QR code stored, no call in flight.
fn payment(i: usize, now: i64) -> PaymentRecord {
    let no = out_trade_no(i);
    let request = json!({
        "merchant_id": MERCHANT, "out_trade_no": no, "amount": AMOUNT, "currency": "CNY",
        "method": "wechat_native", "description": "Ceramic mug", "openid": null,
        "client_ip": null, "expires_at": null, "return_url": null, "attach": null,
        "metadata": {},
    });
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, request.to_string().as_bytes());
    let request_hash: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    PaymentRecord {
        payment_id: format!("pay_bench{i:015}"),
        merchant_id: MERCHANT.into(),
        shop_id: SHOP.into(),
        out_trade_no: no,
        amount: AMOUNT,
        currency: "CNY".into(),
        method: Method::WechatNative,
        status: PaymentStatus::Pending,
        channel: CHANNEL.into(),
        account: Some(Account {
            provider: "wechatpay_v3".into(),
            mode: "direct".into(),
            mchid: Some(MCHID.into()),
            sub_mchid: None,
            app_id: Some(APPID.into()),
            seller: None,
        }),
        rule: "m1001-own-wechat".into(),
        action: Some(
            json!({ "type": "qr_code", "code_url": format!("weixin://wxpay/bizpayurl?pr=bench{i}") }),
        ),
        provider_trade_no: None,
        refunded_amount: 0,
        request_hash,
        request,
        error_code: None,
        error_message: None,
        attempt_until: None,
        created_at: now,
        updated_at: now,
        paid_at: None,
        expires_at: now + 2 * 3600 * 1000,
        version: 1,
        late: false,
    }
}

/// Seeds `n` payments into a fresh file at `db`: written on /dev/shm, then copied into place.
async fn seed(db: &Path, n: usize) {
    let scratch = tempfile::tempdir_in("/dev/shm").expect("a temp dir on /dev/shm");
    let path = scratch.path().join("seed.db");
    let now = now_ms();
    {
        let store = SqliteStore::open(&path)
            .await
            .expect("opening the seed store");
        for i in 0..n {
            let p = payment(i, now);
            assert!(store.insert_payment(&p).await.unwrap().is_none());
            // What the reconciler's first round would do: first check one minute after creation.
            store
                .schedule_payment_check(&p.payment_id, Some(now + 60_000))
                .await
                .unwrap();
        }
    } // The store's threads close their connections just after the drop, the writer's last
      // once the readers' are closed: alone, it checkpoints the WAL into the file and removes
      // it. (They used to close all at once, and now and then none was alone: the WAL stayed
      // and this failed, "WAL left behind", until a rerun.) The copy below must be the whole
      // store, so it waits for that close, not for a second chance.
    let wal = path.with_extension("db-wal");
    for _ in 0..500 {
        if !wal.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(!wal.exists(), "WAL left behind");
    std::fs::copy(&path, db).expect("copying the seeded store");
    std::fs::File::open(db).unwrap().sync_all().unwrap();
}

struct Notification {
    headers: Vec<(&'static str, String)>,
    body: Bytes,
}

/// WeChat Pay's `TRANSACTION.SUCCESS` for order `i`, shaped as tests/notifications.rs does.
fn notification(platform: &RsaSigner, i: usize, ts: i64) -> Notification {
    let no = out_trade_no(i);
    let transaction = json!({
        "mchid": MCHID, "appid": APPID, "out_trade_no": no,
        "transaction_id": format!("42000000002026112{i:011}"),
        "trade_type": "NATIVE", "trade_state": "SUCCESS", "trade_state_desc": "支付成功",
        "bank_type": "OTHERS", "attach": "", "success_time": "2026-11-25T12:00:00+08:00",
        "payer": { "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" },
        "amount": { "total": AMOUNT, "payer_total": AMOUNT, "currency": "CNY", "payer_currency": "CNY" },
    });
    let nonce = format!("{:012}", i);
    let ciphertext = sign::aead_encrypt(
        APIV3_KEY.as_bytes(),
        &nonce,
        "transaction",
        transaction.to_string().as_bytes(),
    )
    .unwrap();
    let body = json!({
        "id": format!("EV-bench-{i}"), "create_time": "2026-11-25T12:00:00+08:00",
        "resource_type": "encrypt-resource", "event_type": "TRANSACTION.SUCCESS",
        "summary": "支付成功",
        "resource": { "algorithm": "AEAD_AES_256_GCM", "ciphertext": ciphertext,
                      "associated_data": "transaction", "nonce": nonce,
                      "original_type": "transaction" },
    })
    .to_string();
    let (ts, header_nonce) = (ts.to_string(), format!("HdrN0nce{i}"));
    let signature = platform.sign_b64(&sign::response_message(&ts, &header_nonce, body.as_bytes()));
    Notification {
        headers: vec![
            ("wechatpay-serial", "PUB_KEY_ID_SANDBOX_TEST_ONLY".into()),
            ("wechatpay-timestamp", ts),
            ("wechatpay-nonce", header_nonce),
            ("wechatpay-signature", signature),
            (
                "wechatpay-signature-type",
                "WECHATPAY2-SHA256-RSA2048".into(),
            ),
            ("content-type", "application/json".into()),
        ],
        body: Bytes::from(body),
    }
}

/// What the shop's webhook got: requests, and the distinct event ids among them.
#[derive(Default)]
struct Deliveries {
    requests: AtomicUsize,
    events: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Deliveries {
    fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    fn events(&self) -> usize {
        self.events.lock().unwrap().len()
    }
}

/// The shop's webhook: answers every delivery 200, records the event ids.
async fn receiver(got: Arc<Deliveries>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/payroute/events", listener.local_addr().unwrap());
    let handler = move |req: Request<hyper::body::Incoming>, _peer| {
        let got = got.clone();
        async move {
            let raw = req.into_body().collect().await.unwrap().to_bytes();
            let id = serde_json::from_slice::<serde_json::Value>(&raw).unwrap()["id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            got.requests.fetch_add(1, Ordering::Relaxed);
            got.events.lock().unwrap().insert(id);
            Response::new(Full::new(Bytes::new()))
        }
    };
    tokio::spawn(payroute::server::serve(
        listener,
        None,
        handler,
        std::future::pending(),
        Default::default(),
        std::sync::Arc::new(payroute::api::error::refusal),
    ));
    url
}

/// utime + stime of this process, in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

struct Figures {
    label: String,
    n: usize,
    wall: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
    cpu_ms_per: f64,
    delivered_in_window: usize,
}

impl Figures {
    fn print(&self, c: usize) {
        println!(
            "notify/{:<4} N={} C={}: {:.0} notifications/s ({:.2} s), latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.label,
            self.n,
            c,
            self.n as f64 / self.wall.as_secs_f64(),
            self.wall.as_secs_f64(),
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3,
        );
        println!(
            "            CPU {:.3} ms/notification (whole process: driver and webhook receiver included, an upper bound); {} of {} webhook events delivered within the run",
            self.cpu_ms_per, self.delivered_in_window, self.n,
        );
    }
}

async fn run(label: &str, dir: &Path, n: usize, c: usize, closed_webhook: bool) -> Figures {
    let db = dir.join("payroute.db");
    let t = Instant::now();
    seed(&db, n).await;
    eprintln!("[{label}] seeded {n} payments in {:.1?}", t.elapsed());

    let delivered = Arc::new(Deliveries::default());
    let webhook_url = if closed_webhook {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        format!("http://127.0.0.1:{port}/payroute/events")
    } else {
        receiver(delivered.clone()).await
    };
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_port = api.local_addr().unwrap().port();
    let config_path = dir.join("payroute.yaml");
    std::fs::write(&config_path, config_yaml(&db, api_port, &webhook_url)).unwrap();
    let config = Config::load(&config_path).unwrap_or_else(|e| panic!("bench config: {e}"));

    let t = Instant::now();
    let platform =
        RsaSigner::from_text(&std::fs::read_to_string(key("wechatpay_platform_key.pem")).unwrap())
            .unwrap();
    let ts = now_ms() / 1000;
    let notifications: Arc<Vec<Notification>> =
        Arc::new((0..n).map(|i| notification(&platform, i, ts)).collect());
    eprintln!("[{label}] built {n} notifications in {:.1?}", t.elapsed());

    let running: Running = payroute::app::start(
        config,
        Listeners {
            api,
            admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            sandbox: None,
        },
        false,
    )
    .await
    .unwrap_or_else(|e| panic!("starting the proxy: {e}"));
    let url: http::Uri = format!("http://{}/notify/{CHANNEL}", running.api_addr)
        .parse()
        .unwrap();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(c)
        .build_http();

    let next = Arc::new(AtomicUsize::new(0));
    let (cpu0, t0) = (cpu_ticks(), Instant::now());
    let mut workers = Vec::new();
    for _ in 0..c {
        let (client, url, next, notifications) = (
            client.clone(),
            url.clone(),
            next.clone(),
            notifications.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(note) = notifications.get(i) else {
                    return latencies;
                };
                let mut req = Request::builder().method(HttpMethod::POST).uri(url.clone());
                for (k, v) in &note.headers {
                    req = req.header(*k, v.as_str());
                }
                let req = req.body(Full::new(note.body.clone())).unwrap();
                let sent = Instant::now();
                let resp = client.request(req).await.expect("the proxy answers");
                let status = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                latencies.push(sent.elapsed());
                assert_eq!(
                    status,
                    StatusCode::NO_CONTENT,
                    "notification {i}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    for w in workers {
        latencies.extend(w.await.expect("a driver task panicked"));
    }
    let wall = t0.elapsed();
    let cpu = cpu_ticks() - cpu0;
    let delivered_in_window = delivered.events();
    assert_eq!(latencies.len(), n);
    latencies.sort();
    let pct = |p: f64| latencies[((n as f64 * p).ceil() as usize).clamp(1, n) - 1];

    if !closed_webhook {
        // Not timed: how long the outbox needs to catch up (it shares the store's writer).
        let t = Instant::now();
        while delivered.events() < n && t.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "[{label}] webhooks: {} of {n} events delivered {:.1?} after the last notification, in {} requests ({} duplicates)",
            delivered.events(),
            t.elapsed(),
            delivered.requests(),
            delivered.requests() - delivered.events(),
        );
    }
    running.shutdown().await;

    // Every payment succeeded, and each has its one event, in the file itself.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let count =
        |sql: &str| -> usize { conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as usize };
    let succeeded = count("SELECT COUNT(*) FROM payments WHERE status = 'succeeded'");
    let events = count("SELECT COUNT(*) FROM events WHERE event_type = 'payment.succeeded'");
    let paying_events = count(
        "SELECT COUNT(DISTINCT payment_id) FROM events WHERE event_type = 'payment.succeeded'",
    );
    assert_eq!(succeeded, n, "payments succeeded");
    assert_eq!((events, paying_events), (n, n), "payment.succeeded events");
    eprintln!("[{label}] store: {succeeded} payments succeeded, {events} events written");

    Figures {
        label: label.to_string(),
        n,
        wall,
        p50: pct(0.50),
        p99: pct(0.99),
        max: latencies[n - 1],
        cpu_ms_per: cpu as f64 * 1000.0 / clk_tck() as f64 / n as f64,
        delivered_in_window,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let n = env_usize("NOTIFY_BENCH_N", 5000);
    let c = env_usize("NOTIFY_BENCH_C", 32);
    assert!(
        n > 0 && c > 0,
        "NOTIFY_BENCH_N and NOTIFY_BENCH_C must be positive"
    );
    let closed = std::env::var("NOTIFY_BENCH_WEBHOOK").is_ok_and(|v| v == "closed");
    let only = std::env::var("NOTIFY_BENCH_ONLY").ok();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut all = Vec::new();
    let locations: [(&str, PathBuf); 2] = [
        ("disk", std::env::temp_dir()),
        ("shm", PathBuf::from("/dev/shm")),
    ];
    for (label, parent) in locations {
        if only.as_deref().is_some_and(|o| o != label) {
            continue;
        }
        let dir = tempfile::tempdir_in(&parent)
            .unwrap_or_else(|e| panic!("a temp dir in {}: {e}", parent.display()));
        eprintln!(
            "[{label}] store in {} ({} webhook)",
            dir.path().display(),
            if closed { "closed-port" } else { "200" }
        );
        all.push(rt.block_on(run(label, dir.path(), n, c, closed)));
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|i| {
            i.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "{cores} CPUs ({cpu}); disk: {}, shm: /dev/shm; webhook {}",
        std::env::temp_dir().display(),
        if closed {
            "on a closed port"
        } else {
            "answers 200"
        }
    );
    for f in &all {
        f.print(c);
    }
}
