//! The inbound HTTP listener shared by the API, the admin port and the sandbox: HTTP/1.1 and
//! HTTP/2 (h2c or ALPN over TLS), optional rustls termination, graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::defaults::{
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_REQUEST_TIMEOUT, UNCONFIGURED_LISTENER_DRAIN,
};

/// Settings of the API and admin listeners (config `server:`).
#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Providers call `{public_base_url}/notify/{channel}`; no trailing slash.
    pub public_base_url: String,
    pub max_body_bytes: usize,
    pub drain_timeout: Duration,
    pub tls: Option<TlsSettings>,
    pub limits: ListenerLimits,
}

/// HTTP/2: streams one connection may have open at once.
const H2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// HTTP/2: a ping this often on a quiet connection; no answer within the timeout closes it.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2: streams a client may open and reset before we answer (the "rapid reset" attack).
const H2_MAX_PENDING_RESETS: usize = 32;
/// Request head size, both protocols: the API's heads are small.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// What one listener tolerates from its clients, and how long it drains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_in_flight: usize,
    pub request_timeout: Duration,
    pub drain: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            drain: UNCONFIGURED_LISTENER_DRAIN,
        }
    }
}

/// Why the listener answered a request itself instead of its handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `max_in_flight` requests were being handled: shed at once, retry later.
    Overloaded,
    /// The handler did not answer within `request_timeout` (it goes on running).
    TimedOut,
    /// The handler failed without an answer (a bug); details are in the log.
    Failed,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [Refusal::Overloaded, Refusal::TimedOut, Refusal::Failed];
}

/// Turns a [`Refusal`] into the listener's answer (the API's error format, on the API port).
pub type Refuse = Arc<dyn Fn(Refusal) -> Response<Body> + Send + Sync>;

/// Why a listener's certificate, key or `client_ca` could not make a TLS config. The text
/// names the part (`cert`, `key`, `client_ca`), never the key's bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("cert: not PEM ({0})")]
    CertNotPem(String),
    #[error("cert: no certificate found")]
    NoCert,
    #[error("key: not a PEM private key ({0})")]
    KeyNotPem(String),
    #[error("client_ca: not PEM ({0})")]
    ClientCaNotPem(String),
    #[error("client_ca: not a CA certificate ({0})")]
    ClientCaRejected(String),
    #[error("client_ca: no certificate found")]
    NoClientCa,
    #[error("client_ca: {0}")]
    ClientVerifier(String),
    #[error("certificate and key do not fit: {0}")]
    Mismatch(String),
    /// rustls refused its own protocol versions (a build without them).
    #[error("{0}")]
    Rustls(String),
}

/// A rustls server config built from PEM text.
#[derive(Clone)]
pub struct TlsSettings {
    pub config: Arc<rustls::ServerConfig>,
    /// `client_ca` is set: clients are asked for a certificate, and the API refuses a shop
    /// whose connection presented none (see [`ClientCertificate`]).
    pub client_ca: bool,
}

/// Put on each request that came over TLS: whether its connection presented a client
/// certificate that `client_ca` verified at the handshake. A presented certificate that
/// does not verify fails the handshake, so "presented" here means "verified". Requests over
/// plain TCP carry none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientCertificate {
    pub verified: bool,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsSettings(<certificate and key>)")
    }
}

impl TlsSettings {
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<TlsSettings, TlsError> {
        TlsSettings::with_client_ca(cert_pem, key_pem, None)
    }

    /// With `client_ca_pem`, every client is asked for a certificate that chains to it, but
    /// one without is still let in: providers notifying `/notify/*` on the same listener
    /// have none, so the API, not the handshake, refuses a shop without one. A certificate
    /// that is presented and does not chain fails the handshake. Without, none is asked for.
    pub fn with_client_ca(
        cert_pem: &str,
        key_pem: &str,
        client_ca_pem: Option<&str>,
    ) -> Result<TlsSettings, TlsError> {
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::CertNotPem(e.to_string()))?;
        if certs.is_empty() {
            return Err(TlsError::NoCert);
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::KeyNotPem(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        // rustls speaks TLS 1.2 and 1.3 only: nothing older is possible.
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let builder = match client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    let ca = ca.map_err(|e| TlsError::ClientCaNotPem(e.to_string()))?;
                    roots
                        .add(ca)
                        .map_err(|e| TlsError::ClientCaRejected(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(TlsError::NoClientCa);
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::ClientVerifier(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Mismatch(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsSettings {
            config: Arc::new(config),
            client_ca: client_ca_pem.is_some(),
        })
    }
}

/// The TLS config a listener hands each new connection. [`TlsSource::rotate`] swaps it (on
/// reload), so a renewed certificate serves new connections while open ones keep theirs.
#[derive(Clone)]
pub struct TlsSource(Arc<arc_swap::ArcSwap<rustls::ServerConfig>>);

impl TlsSource {
    pub fn new(tls: &TlsSettings) -> TlsSource {
        TlsSource(Arc::new(arc_swap::ArcSwap::new(tls.config.clone())))
    }

    pub fn rotate(&self, tls: &TlsSettings) {
        self.0.store(tls.config.clone());
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.0.load_full())
    }
}

pub type Body = Full<Bytes>;

/// Accepts connections until `shutdown` resolves, then lets in-flight requests finish for
/// up to `limits.drain` before returning.
///
/// Each request runs as its own task: a client that hangs up, or a request past its
/// deadline, does not cancel a payment half-way (the outcome is still stored).
///
/// # Limits
/// - At most `limits.max_connections` connections are served at once: the next one is
///   accepted when one closes (the kernel's backlog holds the rest).
/// - A connection must send its request head (HTTP/1) or finish its TLS handshake within
///   `limits.header_read_timeout`. hyper starts that timer again whenever a keep-alive
///   connection waits for its next request, so it is also the idle timeout. HTTP/2
///   connections are pinged instead, and closed when a ping goes unanswered. The first
///   bytes (plain TCP) and the TLS handshake have a deadline of their own before hyper's
///   starts, so a client slow at both may take up to twice the timeout for its first head.
/// - At most `limits.max_in_flight` requests are handled at once; the next is refused at
///   once with [`Refusal::Overloaded`] and none already accepted is disturbed.
/// - A request not answered within `limits.request_timeout` gets [`Refusal::TimedOut`].
pub async fn serve<H, F, S>(
    listener: TcpListener,
    tls: Option<TlsSource>,
    handler: H,
    shutdown: S,
    limits: ListenerLimits,
    refuse: Refuse,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
    S: Future<Output = ()>,
{
    let graceful = GracefulShutdown::new();
    // A connection is watched by `graceful` only once hyper serves it; before that (the TLS
    // handshake, the first bytes) it waits for this instead, so that a connection opened and
    // left silent — a load balancer's spare, a client's speculative one — does not hold the
    // drain up until its header timeout.
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let connections = Connections {
        builders: Arc::new(builders(&limits)),
        tls,
        requests: Requests {
            handler,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            refuse,
            timeout: limits.request_timeout,
        },
        header_read_timeout: limits.header_read_timeout,
        stop,
    };
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    while let Some((stream, peer, slot)) = accept(&listener, &slots, &mut shutdown).await {
        let _ = stream.set_nodelay(true);
        let (connections, watcher) = (connections.clone(), graceful.watcher());
        // The certificate serving now, for this connection's whole life.
        let acceptor = connections.tls.as_ref().map(TlsSource::acceptor);
        tokio::spawn(async move {
            let _slot = slot;
            connections
                .serve_connection(stream, peer, acceptor, watcher)
                .await;
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    drain(graceful, limits.drain).await;
}

/// The next connection, once a connection slot is free; `None` once `shutdown` resolves.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<(TcpStream, SocketAddr, tokio::sync::OwnedSemaphorePermit)> {
    loop {
        let slot = tokio::select! {
            _ = shutdown.as_mut() => return None,
            slot = slots.clone().acquire_owned() => slot.ok()?,
        };
        tokio::select! {
            _ = shutdown.as_mut() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => return Some((stream, peer, slot)),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Lets the connections hyper serves finish for up to `drain`, then closes the rest.
async fn drain(graceful: GracefulShutdown, drain: Duration) {
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?drain, "drain timed out; closing remaining connections");
    }
}

/// hyper's builders, one fixed to each protocol: HTTP/1.1 and HTTP/2.
///
/// Each connection is served by a builder fixed to its protocol: told from a peek at the
/// first bytes on plain TCP (see `speaks_h2`), from ALPN on TLS. The auto builder reads the
/// first bytes itself and hands them back as a separate read, which makes hyper grow each
/// connection's read buffer from 8 to 16 KiB; and it waits for them without a deadline.
fn builders(limits: &ListenerLimits) -> Builders {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        // No read while a request is being handled: hyper would read ahead only to notice a
        // client hanging up, which cancels nothing here (the work is its own task), and that
        // read needs a second 8 KiB buffer per connection while the request's head still
        // holds the first. A client that half-closes after its request still gets the answer.
        .half_close(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    Builders {
        http1: builder.clone().http1_only(),
        http2: builder.http2_only(),
    }
}

struct Builders {
    http1: Builder<TokioExecutor>,
    http2: Builder<TokioExecutor>,
}

impl Builders {
    fn for_protocol(&self, h2: bool) -> &Builder<TokioExecutor> {
        if h2 {
            &self.http2
        } else {
            &self.http1
        }
    }
}

/// How each request of a listener is handled: the handler, and the limits around it.
#[derive(Clone)]
struct Requests<H> {
    handler: H,
    in_flight: Arc<Semaphore>,
    refuse: Refuse,
    timeout: Duration,
}

impl<H, F> Requests<H>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    /// Shed at once past `max_in_flight`, else run as its own task and answered within the
    /// request timeout.
    async fn handle(
        self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, Infallible> {
        let Ok(permit) = self.in_flight.try_acquire_owned() else {
            return Ok((self.refuse)(Refusal::Overloaded));
        };
        let h = self.handler;
        // The permit goes with the task: work that outlives its deadline still counts.
        let work = tokio::spawn(async move {
            let _permit = permit;
            h(req, peer).await
        });
        Ok(match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                tracing::error!(%peer, error = %e, "request handler failed");
                (self.refuse)(Refusal::Failed)
            }
            Err(_) => (self.refuse)(Refusal::TimedOut),
        })
    }
}

/// What every connection of a listener shares.
#[derive(Clone)]
struct Connections<H> {
    builders: Arc<Builders>,
    tls: Option<TlsSource>,
    requests: Requests<H>,
    header_read_timeout: Duration,
    /// Set when the listener stops: a connection hyper does not serve yet is dropped.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl<H, F> Connections<H>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    /// One accepted connection, from its first bytes (or its TLS handshake) to its end.
    async fn serve_connection(
        mut self,
        stream: TcpStream,
        peer: SocketAddr,
        acceptor: Option<TlsAcceptor>,
        watcher: Watcher,
    ) {
        let result = match acceptor {
            None => {
                let first_bytes =
                    tokio::time::timeout(self.header_read_timeout, speaks_h2(&stream));
                let h2 = tokio::select! {
                    // Bytes already there are served, even when shutdown comes with them.
                    biased;
                    first = first_bytes => match first {
                        Ok(Ok(h2)) => h2,
                        // Nothing (or a broken socket) within the header timeout.
                        Ok(Err(_)) | Err(_) => return,
                    },
                    _ = self.stop.wait_for(|s| *s) => return,
                };
                let conn = self
                    .builders
                    .for_protocol(h2)
                    .serve_connection(TokioIo::new(stream), self.service(peer, None))
                    .into_owned();
                watcher.watch(conn).await
            }
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(self.header_read_timeout, acceptor.accept(stream));
                let tls = tokio::select! {
                    biased;
                    done = handshake => match done {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    },
                    _ = self.stop.wait_for(|s| *s) => return,
                };
                // The protocol is what ALPN agreed (h2 over TLS needs it, RFC 9113 §3.2):
                // a builder fixed to it, so a client silent after the handshake meets
                // hyper's header timeout, which the auto builder's version read has not.
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                let client = ClientCertificate {
                    verified: tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|c| !c.is_empty()),
                };
                let conn = self
                    .builders
                    .for_protocol(h2)
                    .serve_connection(TokioIo::new(tls), self.service(peer, Some(client)))
                    .into_owned();
                watcher.watch(conn).await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }

    /// The connection's requests. Over TLS, each carries whether the handshake verified a
    /// client certificate.
    fn service(
        &self,
        peer: SocketAddr,
        client: Option<ClientCertificate>,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    > + Clone
           + Send
           + 'static {
        let requests = self.requests.clone();
        service_fn(move |mut req: Request<Incoming>| {
            if let Some(client) = client {
                req.extensions_mut().insert(client);
            }
            requests.clone().handle(req, peer)
        })
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4): what an h2c client sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client opens with the HTTP/2 preface, from its first bytes, left unread
/// (`peek`) for hyper to read itself. Waits while what has arrived is a strict prefix of the
/// preface; an HTTP/1 request differs from it by its second byte at the latest.
async fn speaks_h2(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; 24];
    let mut pause = Duration::from_millis(1);
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A part of the preface: peek returns at once while those bytes are unread, so wait
        // for the rest (rare: clients send the preface in one segment).
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A JSON answer; the API, the admin port and the sandbox all answer this way.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Percent-decoding of one path segment (`|` arrives as `%7C`).
pub fn decode(segment: &str) -> String {
    if !segment.contains('%') {
        return segment.to_string();
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            // Bytes, not a str slice: a slice inside a multi-byte character would panic.
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_decode_without_panicking() {
        assert_eq!(super::decode("a%7Cb"), "a|b");
        assert_eq!(super::decode("%7c%2A"), "|*");
        assert_eq!(super::decode("50%"), "50%");
        assert_eq!(super::decode("%zz%é"), "%zz%é");
        assert_eq!(super::decode("%"), "%");
    }
}
