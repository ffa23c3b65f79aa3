//! The listener: HTTP/2 without TLS (h2c), and a drain that lets in-flight payments finish.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
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

/// Restarts `h` with these listener limits written into its config.
async fn with_limits(h: &mut Harness, header_read_timeout: &str, max_connections: usize) {
    let text = std::fs::read_to_string(&h.config_path).unwrap().replace(
        "  drain_timeout: 5s\n",
        &format!(
            "  drain_timeout: 5s\n  header_read_timeout: {header_read_timeout}\n  max_connections: {max_connections}\n"
        ),
    );
    support::write_atomically(&h.config_path, &text);
    h.restart().await;
}

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
    with_limits(&mut h, "300ms", 100).await;
    let addr = h.api.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /v1/payments/m_1001/x HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    // Without a header-read timeout this waits forever (and the deadline fails the test).
    let answer = until_closed(&mut slow).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut h = Harness::start().await;
    with_limits(&mut h, "10s", 2).await;
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
