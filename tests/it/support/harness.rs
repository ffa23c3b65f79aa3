//! The proxy under test on listeners it binds itself (127.0.0.1:0), with a real SQLite file
//! (or a fresh PostgreSQL schema: [`Harness::start_on_postgres`]), the sandbox provider on its
//! own socket as the upstream, and a small HTTP client.

use super::*;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub running: Option<Running>,
    pub sandbox: Arc<Sandbox>,
    pub upstream: Upstream,
    /// The shop's webhook receiver (both test shops post here).
    pub receiver: Receiver,
    pub site: Site,
    pub api: String,
    pub admin: String,
    pub sandbox_url: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    /// The config's `store:` value.
    store: String,
    /// The PostgreSQL schema the proxy runs on, dropped with the harness.
    pub pg: Option<PgSchema>,
}

/// How [`Harness::start_on_postgres_opts`] starts.
pub struct PgOptions<'a> {
    /// Rules (and top-level keys after them).
    pub rules: &'a str,
    /// The url the proxy connects to instead of the test database's (e.g. a forwarder).
    pub url: Option<String>,
    /// More keys of `store:`, each starting with `, ` (e.g. `", lease: 2s"`).
    pub store_extra: &'a str,
    /// `server.public_base_url` instead of the harness proxy's own API address (so providers'
    /// notifications go to another instance).
    pub public_base_url: Option<String>,
}

impl Default for PgOptions<'_> {
    fn default() -> Self {
        PgOptions {
            rules: RULES,
            url: None,
            store_extra: "",
            public_base_url: None,
        }
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// Asserts a unified-API error: HTTP status and `error.code`.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> &Reply {
        assert_eq!(
            (self.status, self.body["error"]["code"].as_str()),
            (status, Some(code)),
            "{}",
            self.text
        );
        self
    }

    /// Asserts a 201 whose payment went to `channel`.
    #[track_caller]
    pub fn expect_created_on(&self, channel: &str) -> &Reply {
        assert_eq!(
            (self.status, self.body["channel"].as_str()),
            (201, Some(channel)),
            "{}",
            self.text
        );
        self
    }

    /// The error message, for checks on what it names.
    pub fn error_message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

impl Harness {
    /// Proxy + sandbox over plain HTTP with the standard rules.
    pub async fn start() -> Harness {
        Harness::start_with(false, RULES, "").await
    }

    /// With the Alipay channels of [`alipay_channels`] and rules that name them.
    pub async fn start_alipay(rules: &str) -> Harness {
        Harness::start_inner(false, rules, &|up| alipay_channels(up)).await
    }

    pub async fn start_with(tls: bool, rules: &str, extra_channels: &str) -> Harness {
        Harness::start_inner(tls, rules, &|_| extra_channels.to_string()).await
    }

    /// [`Harness::start`] on a fresh PostgreSQL schema; `None` (after saying so loudly) when
    /// PostgreSQL is not reachable and `PAYROUTE_REQUIRE_PG=1` is not set.
    pub async fn start_on_postgres() -> Option<Harness> {
        Harness::start_on_postgres_with(RULES).await
    }

    /// [`Harness::start_on_postgres`] with other rules (and top-level keys after them).
    pub async fn start_on_postgres_with(rules: &str) -> Option<Harness> {
        Harness::start_on_postgres_at(rules, None).await
    }

    /// [`Harness::start_on_postgres_with`], the proxy connecting to `url` (e.g. through a
    /// [`PgForwarder`]) instead of the test database's url.
    pub async fn start_on_postgres_at(rules: &str, url: Option<String>) -> Option<Harness> {
        Harness::start_on_postgres_opts(PgOptions {
            rules,
            url,
            ..PgOptions::default()
        })
        .await
    }

    /// [`Harness::start_on_postgres`] with every option.
    pub async fn start_on_postgres_opts(o: PgOptions<'_>) -> Option<Harness> {
        let pg = PgSchema::create("payroute_e2e_").await?;
        let store = format!(
            "{{ kind: postgres, url: \"{}\", pool_size: 8, schema: {}{} }}",
            o.url.as_deref().unwrap_or(&pg.url),
            pg.name,
            o.store_extra,
        );
        let mut h = Harness::start_inner_on(
            false,
            o.rules,
            &|_| String::new(),
            Some(store),
            o.public_base_url,
        )
        .await;
        h.pg = Some(pg);
        Some(h)
    }

    async fn start_inner(tls: bool, rules: &str, extra: &dyn Fn(&Upstream) -> String) -> Harness {
        Harness::start_inner_on(tls, rules, extra, None, None).await
    }

    async fn start_inner_on(
        tls: bool,
        rules: &str,
        extra: &dyn Fn(&Upstream) -> String,
        store: Option<String>,
        public_base_url: Option<String>,
    ) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = store.unwrap_or_else(|| {
            format!(
                "{{ kind: sqlite, path: {} }}",
                dir.path().join("payroute.db").display()
            )
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = if tls {
            let ca = dir.path().join("ca.pem");
            std::fs::write(&ca, payroute::sandbox::TLS_CA_PEM).unwrap();
            Upstream {
                base_url: format!("https://localhost:{port}"),
                ca_file: Some(ca.display().to_string()),
            }
        } else {
            Upstream {
                base_url: format!("http://127.0.0.1:{port}"),
                ca_file: None,
            }
        };
        let config_path = dir.path().join("payroute.yaml");
        let receiver = Receiver::start().await;
        // The API port is chosen first, so providers' notify_url can name it.
        let api_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_port = api_listener.local_addr().unwrap().port();
        let site = Site {
            public_base_url: public_base_url
                .unwrap_or_else(|| format!("http://127.0.0.1:{api_port}")),
            webhook_url: receiver.url.clone(),
        };
        let yaml = config_yaml(&upstream, &store, &site, rules, &extra(&upstream));
        std::fs::write(&config_path, yaml).unwrap();
        let config = Config::load(&config_path).unwrap_or_else(|e| panic!("test config: {e}"));
        let sandbox = Sandbox::new(payroute::config::sandbox_merchants(
            &config.channels,
            &config.merchants,
        ));
        let sandbox_tls = tls.then(|| {
            payroute::server::TlsSettings::new(
                payroute::sandbox::TLS_CERT_PEM,
                payroute::sandbox::TLS_KEY_PEM,
            )
            .unwrap()
        });
        tokio::spawn(
            sandbox
                .clone()
                .serve(listener, sandbox_tls, std::future::pending()),
        );
        let running = start_proxy_on(config, api_listener).await;
        Harness {
            api: format!("http://{}", running.api_addr),
            admin: format!("http://{}", running.admin_addr),
            sandbox_url: format!("http://127.0.0.1:{port}"),
            running: Some(running),
            sandbox,
            upstream,
            receiver,
            site,
            config_path,
            dir,
            client: Client::builder(TokioExecutor::new()).build_http(),
            store,
            pg: None,
        }
    }

    /// Another proxy instance on the same config (and so the same store and sandbox), as a
    /// second instance behind a load balancer; its API base url and the running instance.
    pub async fn another_instance(&self) -> (String, Running) {
        let config = Config::load(&self.config_path).unwrap_or_else(|e| panic!("test config: {e}"));
        let running = start_proxy(config).await;
        (format!("http://{}", running.api_addr), running)
    }

    /// [`Harness::another_instance`] serving its API on `api`.
    pub async fn another_instance_on(&self, api: TcpListener) -> (String, Running) {
        let config = Config::load(&self.config_path).unwrap_or_else(|e| panic!("test config: {e}"));
        let running = start_proxy_on(config, api).await;
        (format!("http://{}", running.api_addr), running)
    }

    /// Stops the proxy (draining) and starts it again from the config file as it is now, on
    /// new ports, with the same database and sandbox.
    pub async fn restart(&mut self) {
        if let Some(r) = self.running.take() {
            within("the proxy to stop", r.shutdown()).await;
        }
        let config = Config::load(&self.config_path).unwrap_or_else(|e| panic!("test config: {e}"));
        // The same API port: it is the providers' notify_url.
        let api = self
            .site
            .public_base_url
            .trim_start_matches("http://")
            .to_string();
        let listener = within("the API port to be free again", async {
            loop {
                match TcpListener::bind(&api).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await;
        let running = start_proxy_on(config, listener).await;
        self.api = format!("http://{}", running.api_addr);
        self.admin = format!("http://{}", running.admin_addr);
        self.running = Some(running);
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("payroute.db")
    }

    /// Rewrites the config file with other rules (the file watcher may pick it up too).
    pub fn write_config(&self, rules: &str, extra_channels: &str) {
        let yaml = config_yaml(
            &self.upstream,
            &self.store,
            &self.site,
            rules,
            extra_channels,
        );
        write_atomically(&self.config_path, &yaml);
    }

    /// Rewrites the config, reloads it through the admin API, and lets the sandbox trust any
    /// new channel keys.
    pub async fn reload_with(&self, rules: &str, extra_channels: &str) {
        self.write_config(rules, extra_channels);
        let r = self
            .admin_post("/admin/reload", &serde_json::json!({}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let config = Config::load(&self.config_path).unwrap();
        self.sandbox
            .set_merchants(payroute::config::sandbox_merchants(
                &config.channels,
                &config.merchants,
            ));
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        self.try_send(method, url, headers, body)
            .await
            .unwrap_or_else(|e| panic!("request to {url} reaches the server: {e}"))
    }

    /// [`Harness::send`], with a connection that fails or closes before the answer as `Err`.
    pub async fn try_send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Reply, String> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        let (parts, bytes) = within(&format!("an answer from {url}"), async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let (parts, body) = resp.into_parts();
            let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok::<_, String>((parts, bytes))
        })
        .await?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        })
    }

    pub async fn create(&self, body: &Value) -> Reply {
        self.try_create(body)
            .await
            .unwrap_or_else(|e| panic!("a create reaches the server: {e}"))
    }

    /// A create whose connection may fail (the proxy is stopping or was killed).
    pub async fn try_create(&self, body: &Value) -> Result<Reply, String> {
        let auth = format!("Bearer {SHOP_KEY}");
        self.try_send(
            Method::POST,
            &format!("{}/v1/payments", self.api),
            &[("authorization", &auth)],
            &body.to_string(),
        )
        .await
    }

    pub async fn get_payment(&self, merchant: &str, no: &str, refresh: bool) -> Reply {
        let auth = format!("Bearer {SHOP_KEY}");
        let q = if refresh { "?refresh=true" } else { "" };
        self.send(
            Method::GET,
            &format!("{}/v1/payments/{merchant}/{no}{q}", self.api),
            &[("authorization", &auth)],
            "",
        )
        .await
    }

    /// `POST /v1/payments/{merchant}/{no}/close`.
    pub async fn close(&self, merchant: &str, no: &str) -> Reply {
        self.shop_send(
            Method::POST,
            &format!("/v1/payments/{merchant}/{no}/close"),
            "",
        )
        .await
    }

    /// `POST /v1/refunds`.
    pub async fn refund(&self, body: &Value) -> Reply {
        self.shop_send(Method::POST, "/v1/refunds", &body.to_string())
            .await
    }

    /// `GET /v1/refunds/{merchant}/{no}`, with `?refresh=true` when asked.
    pub async fn get_refund(&self, merchant: &str, no: &str, refresh: bool) -> Reply {
        let q = if refresh { "?refresh=true" } else { "" };
        self.shop_send(Method::GET, &format!("/v1/refunds/{merchant}/{no}{q}"), "")
            .await
    }

    /// Creates, pays (in the sandbox) and confirms a payment; its payment object.
    pub async fn paid(&self, merchant: &str, no: &str, method: &str, amount: u64) -> Value {
        let r = self
            .create(&payment(
                merchant,
                no,
                method,
                amount,
                serde_json::json!({}),
            ))
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        assert_eq!(self.pay(no).await.status, 200);
        let q = self.get_payment(merchant, no, true).await;
        assert_eq!(q.body["status"], "succeeded", "{}", q.text);
        q.body
    }

    /// A shop API call with the test shop's key.
    pub async fn shop_send(&self, method: Method, path: &str, body: &str) -> Reply {
        let auth = format!("Bearer {SHOP_KEY}");
        self.send(
            method,
            &format!("{}{path}", self.api),
            &[("authorization", &auth)],
            body,
        )
        .await
    }

    pub async fn admin_post(&self, path: &str, body: &Value) -> Reply {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        self.send(
            Method::POST,
            &format!("{}{path}", self.admin),
            &[("authorization", &auth)],
            &body.to_string(),
        )
        .await
    }

    pub async fn admin_get(&self, path: &str) -> Reply {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        self.send(
            Method::GET,
            &format!("{}{path}", self.admin),
            &[("authorization", &auth)],
            "",
        )
        .await
    }

    pub async fn faults(&self, faults: Value) {
        let r = self
            .send(
                Method::POST,
                &format!("{}/sandbox/faults", self.sandbox_url_plain()),
                &[],
                &faults.to_string(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }

    pub async fn pay(&self, no: &str) -> Reply {
        self.send(
            Method::POST,
            &format!("{}/sandbox/pay/{no}", self.sandbox_url_plain()),
            &[],
            "",
        )
        .await
    }

    pub async fn sandbox_orders(&self, no: &str) -> Vec<Value> {
        let r = self
            .send(
                Method::GET,
                &format!("{}/sandbox/orders/{no}", self.sandbox_url_plain()),
                &[],
                "",
            )
            .await;
        r.body["orders"].as_array().cloned().unwrap_or_default()
    }

    /// `GET /sandbox/notifications`: every notification the sandbox made, oldest first.
    pub async fn sandbox_notifications(&self) -> Vec<Value> {
        let r = self
            .send(
                Method::GET,
                &format!("{}/sandbox/notifications", self.sandbox_url_plain()),
                &[],
                "",
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body.as_array().cloned().expect("a JSON list")
    }

    /// The test client speaks plain HTTP; a TLS sandbox is driven through its handler instead.
    fn sandbox_url_plain(&self) -> &str {
        assert!(
            self.upstream.ca_file.is_none(),
            "sandbox knobs need a plain-HTTP sandbox"
        );
        &self.sandbox_url
    }

    pub async fn metrics(&self) -> String {
        self.send(Method::GET, &format!("{}/metrics", self.admin), &[], "")
            .await
            .text
    }

    /// One sample of `/metrics` as it is now: `name` with `labels` (in any order), `None`
    /// when the series is not exported. Several reads that must agree with each other take
    /// one [`Harness::metrics`] text and [`metric`] instead.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric(&self.metrics().await, &series(name, labels))
    }

    /// `GET /readyz`'s status.
    pub async fn ready(&self) -> u16 {
        let url = format!("{}/readyz", self.admin);
        self.send(Method::GET, &url, &[], "").await.status
    }

    /// [`Harness::shutdown`] of a harness the test shared with its tasks (all done by now).
    pub async fn shutdown_shared(h: Arc<Harness>) {
        match Arc::try_unwrap(h) {
            Ok(h) => h.shutdown().await,
            Err(_) => panic!("the harness is still shared"),
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            within("the proxy to stop", r.shutdown()).await;
        }
    }
}

/// The proxy for `config` on fresh 127.0.0.1:0 listeners (the config's `listen` addresses are
/// not used), watching its file for reloads.
pub async fn start_proxy(config: Config) -> Running {
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_proxy_on(config, api).await
}

/// [`start_proxy`] with the API on `api`.
pub async fn start_proxy_on(config: Config, api: TcpListener) -> Running {
    let listeners = Listeners {
        api,
        admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        sandbox: None,
    };
    payroute::app::start(config, listeners, true)
        .await
        .unwrap_or_else(|e| panic!("starting the proxy: {e}"))
}

/// A signed gateway call of `method` by `app` (ISV: for `token`'s seller): its inner
/// answer, whose signature is checked.
pub async fn alipay_call(
    h: &Harness,
    (app_id, keyfile): (&str, &str),
    token: Option<&str>,
    method: &str,
    biz: &Value,
) -> Value {
    use payroute::channel::alipay::sign as ali;
    use payroute::channel::keys::{RsaSigner, RsaVerifier};
    let mut p: std::collections::BTreeMap<String, String> = [
        ("app_id", app_id),
        ("method", method),
        ("charset", "utf-8"),
        ("sign_type", "RSA2"),
        ("timestamp", "2026-12-02 08:00:00"),
        ("version", "1.0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(t) = token {
        p.insert("app_auth_token".into(), t.into());
    }
    p.insert("biz_content".into(), biz.to_string());
    ali::sign_params(
        &mut p,
        &RsaSigner::from_text(&std::fs::read_to_string(key(keyfile)).unwrap()).unwrap(),
    );
    let r = h
        .send(
            Method::POST,
            &format!("{}/gateway.do", h.sandbox_url),
            &[(
                "content-type",
                "application/x-www-form-urlencoded;charset=utf-8",
            )],
            &ali::encode(&p),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let raw = ali::split_answer(r.text.as_bytes(), method).unwrap();
    let sign = raw.sign.unwrap_or_default();
    assert!(
        RsaVerifier::from_text(
            &std::fs::read_to_string(key("alipay_sandbox_pub_key.pem")).unwrap()
        )
        .unwrap()
        .verify_b64(raw.raw.as_bytes(), &sign),
        "the answer is signed: {}",
        r.text
    );
    serde_json::from_str(&raw.raw).unwrap()
}
