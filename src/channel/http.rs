//! The outbound HTTP client: a pooled hyper-util client over rustls (aws-lc-rs), HTTP/1.1
//! and HTTP/2, with the webpki roots plus an optional per-channel CA.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::{ChannelError, ErrorKind};

/// Provider answers are small; anything larger is a broken or hostile upstream.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Why an outbound client could not be set up: the channel's `ca_file`, or rustls itself.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("ca_file: not a PEM certificate ({0})")]
    CaNotPem(String),
    #[error("ca_file: certificate rejected ({0})")]
    CaRejected(String),
    #[error("ca_file: no certificate found")]
    NoCa,
    #[error("TLS setup: {0}")]
    Tls(String),
}

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// A fully read response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpClient {
    pub fn new(ca_pem: Option<&str>) -> Result<HttpClient, ClientError> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(pem) = ca_pem {
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| ClientError::CaNotPem(e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| ClientError::CaRejected(e.to_string()))?;
                added += 1;
            }
            if added == 0 {
                return Err(ClientError::NoCa);
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(3)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(https);
        Ok(HttpClient { inner })
    }

    /// Sends and reads the whole answer within `deadline`.
    ///
    /// # Safety of retries
    /// A connect failure is `NothingSent`. A pooled connection that closed before the
    /// request was written is retried by hyper-util itself. Anything later (a reset, a
    /// timeout) is `Transport` or `Timeout`: the provider may have acted on it.
    pub async fn send(
        &self,
        mut req: Request<Full<Bytes>>,
        deadline: Duration,
    ) -> Result<HttpResponse, ChannelError> {
        // The shop's request id goes on to the provider (outside every signature), so one id
        // finds a payment in payroute's log and in the provider's support tools.
        if let Some(id) = crate::context::request_id() {
            if let Ok(value) = http::HeaderValue::from_str(&id) {
                req.headers_mut()
                    .entry(crate::context::REQUEST_ID)
                    .or_insert(value);
            }
        }
        let call = async {
            let resp = self.inner.request(req).await.map_err(|e| {
                let kind = if e.is_connect() {
                    ErrorKind::NothingSent
                } else {
                    ErrorKind::Transport
                };
                ChannelError::new(kind, error_chain(&e))
            })?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| ChannelError::new(ErrorKind::Transport, format!("reading body: {e}")))?
                .to_bytes();
            Ok(HttpResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match crate::context::waiting(tokio::time::timeout(deadline, call)).await {
            Ok(r) => r,
            Err(_) => Err(ChannelError::new(
                ErrorKind::Timeout,
                format!("no answer within {deadline:?}"),
            )),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}
