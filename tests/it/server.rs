//! The listener: HTTP/2 without TLS (h2c), and a drain that lets in-flight payments finish.

use crate::support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use std::sync::Arc;
use support::{payment, Harness, SHOP_KEY};

#[tokio::test]
async fn the_api_speaks_http2() {
    let h = Harness::start().await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let body = payment("m_1001", "h2-1", "wechat_native", 100, json!({})).to_string();
    let req = Request::post(format!("{}/v1/payments", h.api))
        .header("authorization", format!("Bearer {SHOP_KEY}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 201);
    let v: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["channel"], "m1001_wechat");
    h.shutdown().await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_payments() {
    let mut h = Harness::start().await;
    h.faults(json!({ "latency_ms": 300 })).await;
    let running = h.running.take().unwrap();
    let h = std::sync::Arc::new(h);
    let in_flight = {
        let h = h.clone();
        tokio::spawn(async move {
            h.create(&payment(
                "m_1001",
                "drain-1",
                "wechat_native",
                100,
                json!({}),
            ))
            .await
        })
    };
    // The binding is written before the channel call: once it exists, the request is in flight.
    support::wait_until("the payment to be in flight", || async {
        h.get_payment("m_1001", "drain-1", false).await.status != 404
    })
    .await;
    let (reply, ()) = tokio::join!(
        support::within("the in-flight payment", in_flight),
        support::within("the drain", running.shutdown())
    );
    let reply = reply.unwrap();
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.body["status"], "pending");
    // Stopped: the port no longer accepts connections.
    assert!(
        tokio::net::TcpStream::connect(h.api.trim_start_matches("http://"))
            .await
            .is_err()
    );
}

/// Restarts `h` with these `server:` keys written into its config.
async fn with_limits(h: &mut Harness, keys: &[(&str, &str)]) {
    let lines: String = keys.iter().map(|(k, v)| format!("  {k}: {v}\n")).collect();
    let text = std::fs::read_to_string(&h.config_path).unwrap().replace(
        "  drain_timeout: 5s\n",
        &format!("  drain_timeout: 5s\n{lines}"),
    );
    support::write_atomically(&h.config_path, &text);
    h.restart().await;
}

/// The configured 300 ms timeouts must show well before the 10 s default
/// (`payroute::server::DEFAULT_HEADER_READ_TIMEOUT`) would: a generous bound, not a speed target.
const FAR_BELOW_THE_DEFAULT: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads until the server closes the connection (or fails the test at the deadline).
async fn until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    support::within("the server to close the connection", async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    got
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_cut_off() {
    use tokio::io::AsyncWriteExt;
    let mut h = Harness::start().await;
    with_limits(&mut h, &[("header_read_timeout", "300ms")]).await;
    let addr = h.api.trim_start_matches("http://").to_string();
    let since = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /v1/payments/m_1001/x HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    // Without a header-read timeout this waits forever (and the deadline fails the test).
    let answer = until_closed(&mut slow).await;
    // The configured 300 ms, not the 10 s default.
    assert!(
        since.elapsed() < FAR_BELOW_THE_DEFAULT,
        "{:?}",
        since.elapsed()
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off_while_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut h = Harness::start().await;
    with_limits(&mut h, &[("header_read_timeout", "1s")]).await;
    let addr = h.api.trim_start_matches("http://").to_string();
    let slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = slow.into_split();
    // One byte every 100 ms, without end: a timeout restarted by every read never fires.
    let trickle = tokio::spawn(async move {
        let head = b"GET /v1/payments/m_1001/x HTTP/1.1\r\nHost: a\r\nX-Pad: ";
        let mut sent = 0usize;
        loop {
            let byte = head.get(sent).copied().unwrap_or(b'a');
            if wr.write_all(&[byte]).await.is_err() {
                return sent;
            }
            sent += 1;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    // Meanwhile the others are served.
    let paid = h
        .create(&payment(
            "m_1001",
            "trickle-1",
            "wechat_native",
            100,
            json!({}),
        ))
        .await;
    assert_eq!(paid.status, 201, "{}", paid.text);
    // The server ends the trickler's connection (an answer 408, or just closing it).
    let mut answer = Vec::new();
    support::within("the trickling client to be cut off", async {
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    trickle.abort();
    let again = h.get_payment("m_1001", "trickle-1", false).await;
    assert_eq!(again.status, 200, "{}", again.text);
    h.shutdown().await;
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_cut_off() {
    let mut h = Harness::start().await;
    with_limits(&mut h, &[("header_read_timeout", "300ms")]).await;
    let addr = h.api.trim_start_matches("http://").to_string();
    let since = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Without a deadline before the first byte this waits forever (and fails at the test's).
    let answer = until_closed(&mut silent).await;
    // The configured 300 ms, not the 10 s default.
    assert!(
        since.elapsed() < FAR_BELOW_THE_DEFAULT,
        "{:?}",
        since.elapsed()
    );
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    h.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_never_speaks_does_not_hold_up_the_drain() {
    let mut h = Harness::start().await;
    // Timeouts far past the test's deadline: only the shutdown itself may end that connection.
    let text = std::fs::read_to_string(&h.config_path).unwrap().replace(
        "  drain_timeout: 5s\n",
        "  drain_timeout: 120s\n  header_read_timeout: 120s\n",
    );
    support::write_atomically(&h.config_path, &text);
    h.restart().await;
    let addr = h.api.trim_start_matches("http://").to_string();
    // A spare connection, as load balancers and HTTP clients open ahead of need.
    let mut spare = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let paid = h
        .create(&payment(
            "m_1001",
            "spare-1",
            "wechat_native",
            100,
            json!({}),
        ))
        .await;
    assert_eq!(paid.status, 201, "{}", paid.text);
    let running = h.running.take().unwrap();
    support::within(
        "the drain (held up by a silent connection)",
        running.shutdown(),
    )
    .await;
    assert!(until_closed(&mut spare).await.is_empty());
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::start().await;
    // The channel answers slowly, so the request is still being handled when the client's
    // end of the connection closes.
    h.faults(json!({ "latency_ms": 300 })).await;
    let addr = h.api.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = payment("m_1001", "half-1", "wechat_native", 100, json!({})).to_string();
    conn.write_all(
        format!(
            "POST /v1/payments HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {SHOP_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    conn.shutdown().await.unwrap();
    let answer = until_closed(&mut conn).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 201"), "{text:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut h = Harness::start().await;
    with_limits(&mut h, &[("max_connections", "2")]).await;
    let addr = h.api.trim_start_matches("http://").to_string();
    let idle_1 = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _idle_2 = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut third = tokio::net::TcpStream::connect(&addr).await.unwrap();
    third
        .write_all(
            format!(
                "GET /v1/payments/m_1001/none HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {SHOP_KEY}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), third.read(&mut buf))
            .await
            .is_err(),
        "the third connection waits while two are open"
    );
    drop(idle_1);
    let answer = until_closed(&mut third).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 404"),
        "served once a slot is free"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut h = Harness::start().await;
    with_limits(&mut h, &[("header_read_timeout", "300ms")]).await;
    let addr = h.api.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(
        format!("GET /v1/payments/m_1001/none HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {SHOP_KEY}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = [0u8; 1024];
    let n = support::within("the answer", conn.read(&mut buf))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"));
    // Kept alive, then idle: without an idle timeout this waits until the test's deadline.
    let since = std::time::Instant::now();
    until_closed(&mut conn).await;
    // The configured 300 ms, not the 10 s default.
    assert!(
        since.elapsed() < FAR_BELOW_THE_DEFAULT,
        "{:?}",
        since.elapsed()
    );
    h.shutdown().await;
}

/// Starts a create in the background; it resolves to its reply.
fn spawn_create(h: &Arc<Harness>, no: &str) -> tokio::task::JoinHandle<support::Reply> {
    let (h, body) = (
        h.clone(),
        payment("m_1001", no, "wechat_native", 100, json!({})),
    );
    tokio::spawn(async move { h.create(&body).await })
}

#[tokio::test]
async fn requests_beyond_the_in_flight_cap_are_shed_at_once() {
    let mut h = Harness::start().await;
    with_limits(&mut h, &[("max_in_flight", "2")]).await;
    h.faults(json!({ "latency_ms": 1000 })).await;
    let h = Arc::new(h);
    let first = spawn_create(&h, "cap-1");
    let second = spawn_create(&h, "cap-2");
    for no in ["cap-1", "cap-2"] {
        support::wait_until("both creates to be in flight", || async {
            h.sandbox_orders(no).await.len() == 1
        })
        .await;
    }
    let shed = h
        .create(&payment("m_1001", "cap-3", "wechat_native", 100, json!({})))
        .await;
    // Answered while the two accepted ones are still waiting on the channel: not queued.
    assert!(!first.is_finished() && !second.is_finished());
    shed.expect_error(503, "overloaded");
    assert_eq!(shed.body["error"]["retryable"], true);
    assert_eq!(shed.headers["retry-after"], "1");
    for accepted in [first, second] {
        let reply = support::within("an accepted create", accepted)
            .await
            .unwrap();
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    assert!(
        h.sandbox_orders("cap-3").await.is_empty(),
        "shed before the channel"
    );
    let metrics = h.metrics().await;
    assert_eq!(
        support::metric(
            &metrics,
            r#"payroute_http_refused_total{listener="api",reason="overloaded"}"#
        ),
        Some(1.0)
    );
    // Shed, not remembered: the same create now goes through.
    h.create(&payment("m_1001", "cap-3", "wechat_native", 100, json!({})))
        .await
        .expect_created_on("m1001_wechat");
}

#[tokio::test]
async fn a_request_past_its_deadline_gets_504_and_its_work_goes_on() {
    let mut h = Harness::start().await;
    with_limits(&mut h, &[("request_timeout", "300ms")]).await;
    h.faults(json!({ "latency_ms": 1000 })).await;
    let body = payment("m_1001", "late-1", "wechat_native", 100, json!({}));
    h.create(&body).await.expect_error(504, "request_timeout");
    // The create was not cancelled with its answer: it finishes and stores its outcome.
    support::wait_until("the create to finish", || async {
        h.get_payment("m_1001", "late-1", false).await.body["action"]["type"] == "qr_code"
    })
    .await;
    h.faults(json!({ "latency_ms": 0 })).await;
    let replay = h.create(&body).await;
    assert_eq!(replay.status, 200, "{}", replay.text);
    assert_eq!(h.sandbox_orders("late-1").await.len(), 1, "one create call");
    h.shutdown().await;
}

#[tokio::test]
async fn the_overhead_metric_leaves_out_the_wait_on_the_channel() {
    let h = Harness::start().await;
    h.faults(json!({ "latency_ms": 400 })).await;
    h.create(&payment("m_1001", "oh-1", "wechat_native", 100, json!({})))
        .await
        .expect_created_on("m1001_wechat");
    let metrics = h.metrics().await;
    let sum = |name: &str| {
        support::metric(&metrics, &format!(r#"{name}{{route="create_payment"}}"#)).unwrap()
    };
    let total = sum("payroute_http_request_duration_seconds_sum");
    let own = sum("payroute_overhead_seconds_sum");
    assert!(total >= 0.4, "the request waited on the channel: {total}");
    assert!(own < total - 0.35, "own {own} of {total}");
    assert_eq!(
        support::metric(
            &metrics,
            r#"payroute_overhead_seconds_count{route="create_payment"}"#
        ),
        Some(1.0)
    );
    h.shutdown().await;
}

/// The error codes the API can answer: the string literals of `ErrorCode::as_str` in
/// src/api/error.rs.
fn error_codes() -> std::collections::BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/error.rs");
    let src = std::fs::read_to_string(path).expect("src/api/error.rs (the error codes)");
    let start = src
        .find("pub fn as_str(self)")
        .expect("ErrorCode::as_str in src/api/error.rs");
    let body = &src[start..];
    let body = &body[..body.find("\n    }\n").expect("the end of as_str")];
    body.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_api_describes_itself_in_openapi() {
    let h = Harness::start().await;
    let r = h
        .send(
            http::Method::GET,
            &format!("{}/openapi.json", h.api),
            &[],
            "",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["openapi"], "3.1.0");
    let paths: Vec<&str> = r.body["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for p in [
        "/v1/payments",
        "/v1/payments/{merchant_id}/{out_trade_no}",
        "/v1/payments/{merchant_id}/{out_trade_no}/close",
        "/v1/refunds",
        "/v1/refunds/{merchant_id}/{out_refund_no}",
    ] {
        assert!(paths.contains(&p), "{p} undocumented");
    }
    // Every error code the API can answer is in the schema's enum, and nothing else: the
    // codes are those `ErrorCode::as_str` spells (src/api/error.rs, the one HTTP mapping).
    let documented: std::collections::BTreeSet<String> = r.body["components"]["schemas"]["Error"]
        ["properties"]["error"]["properties"]["code"]["enum"]
        .as_array()
        .expect("the Error schema's code enum")
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let answerable = error_codes();
    assert!(answerable.len() >= 25, "{answerable:?}");
    let undocumented: Vec<&String> = answerable.difference(&documented).collect();
    let unknown: Vec<&String> = documented.difference(&answerable).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "answerable but undocumented: {undocumented:?}; documented but never answered: {unknown:?}"
    );
    h.shutdown().await;
}

/// A known path with a method it does not take is 405 `method_not_allowed` (not 404).
#[tokio::test]
async fn a_method_a_route_does_not_take_is_405_method_not_allowed() {
    let h = Harness::start().await;
    for (method, path) in [
        (http::Method::DELETE, "/v1/payments"),
        (http::Method::PUT, "/v1/payments/m_1001/m405-1"),
        (http::Method::GET, "/v1/payments/m_1001/m405-1/close"),
        (http::Method::PATCH, "/v1/refunds/m_1001/m405-r1"),
    ] {
        h.shop_send(method, path, "")
            .await
            .expect_error(405, "method_not_allowed");
    }
    // The same paths with their own methods are routes (not 405, not 404).
    h.shop_send(http::Method::GET, "/v1/payments/m_1001/m405-1", "")
        .await
        .expect_error(404, "not_found");
    h.shutdown().await;
}

/// Sends a GET as the test shop whose head carries one more header of `pad` bytes, and reads
/// what the server answers before it closes.
async fn with_a_header_of(addr: &str, pad: usize) -> String {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /v1/payments/m_1001/head-cap HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {SHOP_KEY}\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(pad)
    );
    // The server may answer and close before reading it all: a failed write is fine.
    let _ = stream.write_all(head.as_bytes()).await;
    String::from_utf8_lossy(&until_closed(&mut stream).await).into_owned()
}

/// The request head is capped at 16 KiB (`server.rs` `MAX_HEADER_BYTES`): over it, 431.
#[tokio::test]
async fn a_request_head_over_16_kib_is_refused_with_431() {
    let h = Harness::start().await;
    let addr = h.api.trim_start_matches("http://").to_string();
    // 12 KiB of headers is served (the cap is not smaller than that)…
    let under = with_a_header_of(&addr, 12 * 1024).await;
    assert!(under.starts_with("HTTP/1.1 404"), "{under}");
    // …20 KiB is over it: 431, and nothing is routed.
    let over = with_a_header_of(&addr, 20 * 1024).await;
    assert!(over.starts_with("HTTP/1.1 431"), "{over}");
    h.shutdown().await;
}

/// `payroute_store_writes_total` and `payroute_store_commits_total` move with a create.
#[tokio::test]
async fn the_store_counts_its_writes_and_commits() {
    let h = Harness::start().await;
    let writes = || async {
        h.metric("payroute_store_writes_total", &[])
            .await
            .unwrap_or(0.0)
    };
    let commits = || async {
        h.metric("payroute_store_commits_total", &[])
            .await
            .unwrap_or(0.0)
    };
    let (w0, c0) = (writes().await, commits().await);
    h.create(&payment("m_1001", "sw-1", "wechat_native", 100, json!({})))
        .await
        .expect_created_on("m1001_wechat");
    // A create writes its binding and then its outcome: at least two writes, in at least one
    // commit (writes queued together may share one).
    let (w1, c1) = (writes().await, commits().await);
    assert!(w1 >= w0 + 2.0, "writes {w0} -> {w1}");
    assert!(c1 >= c0 + 1.0, "commits {c0} -> {c1}");
    assert!(c1 - c0 <= w1 - w0, "never more commits than writes");
    h.shutdown().await;
}

/// A request still in flight when `drain_timeout` runs out is cut (its client gets no answer)
/// and the process exits: the drain does not wait for it. The channel answers only after its
/// 2 s `timeout`, long after the configured 300 ms drain.
#[tokio::test]
async fn a_request_held_past_drain_timeout_is_cut_and_the_binary_exits() {
    let mut h = Harness::start().await;
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    assert!(text.contains("  drain_timeout: 5s\n"));
    support::write_atomically(
        &h.config_path,
        &text.replace("  drain_timeout: 5s\n", "  drain_timeout: 300ms\n"),
    );
    let mut binary = support::Binary::take_over(&mut h).await;
    h.faults(json!({ "latency_ms": 20_000 })).await;
    let h = Arc::new(h);
    let in_flight = {
        let h = h.clone();
        tokio::spawn(async move {
            h.try_create(&payment("m_1001", "dt-1", "wechat_native", 100, json!({})))
                .await
        })
    };
    // The binding is written before the channel call: once it exists, the request is in flight.
    support::wait_until("the payment to be in flight", || async {
        h.get_payment("m_1001", "dt-1", false).await.status != 404
    })
    .await;
    binary.signal("TERM");
    let reply = support::within("the in-flight create to end", in_flight)
        .await
        .unwrap();
    assert!(
        reply.is_err(),
        "answered instead of cut at the drain timeout: {:?}",
        reply.map(|r| r.text)
    );
    binary.exited().await;
}
