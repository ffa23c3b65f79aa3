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
