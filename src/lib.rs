//! payroute: a payment-routing reverse proxy between shop backends and payment providers.
//!
//! # Layout
//! - `config`: the YAML file, its validation into the runtime model, live reload.
//! - `defaults`: every setting's default and bound, named once; a leaf any layer may use.
//! - `server`: the inbound HTTP/1.1 + HTTP/2 listener with optional TLS and graceful drain.
//! - `shops`: the shop directory — API keys, the merchants each shop may act for, webhooks.
//! - `logging`: text or JSON log lines on stderr (`log:`), no colour off a terminal.
//! - `live`: the live config — the version serving now, its channels, reload and its hooks.
//! - `api`: the unified API for shops; the one place errors become HTTP responses (admin's too).
//! - `context`: what one API request carries through its task — its id, its waits on channels,
//!   its access-log note.
//! - `payment`: the state machine — route, bind, call the channel, store the outcome and the
//!   shop event in one transaction (`payment::commit`, the one commit path); query, close,
//!   refunds.
//! - `inbound`: provider notifications in (`/notify/{channel}`): verify, find the order at the
//!   signed account, apply through `payment`, answer the provider.
//! - `webhooks`: shop events out — the outbox worker and its signed, ordered, at-least-once
//!   delivery.
//! - `reconcile`: the worker that asks about open orders on tiers and closes expired ones.
//! - `statements`: the providers' daily trade statements (a channel fetches the file) — checked
//!   and parsed exactly, all rows or an error.
//! - `routing`: the rules engine; pure, indexed by merchant, with `explain`; orders a rule's
//!   candidates by the live signals it is handed (health windows, drains).
//! - `channel`: one guarded call path per channel (limit, breaker, retries), the outbound HTTP
//!   client, keys, notification verification; `wechatpay`, `alipay`.
//! - `resilience`: retry backoff and budget, circuit breaker, each channel's health window,
//!   GCRA rate limits (local, and `scope: global` ones shared through Redis).
//! - `store`: one trait per concern — `Ledger` (payments, refunds; quota-guarded writes),
//!   `Outbox` (shop events), `Schedule` (reconciliation checks), `Reports` (ops reads, health),
//!   `Drains` (drained channels), `Quotas` (what accounts took of their limits) — each file
//!   with both engines beside it: `sqlite` (group commit; one instance) and `postgres` (pooled, claims
//!   with leases; several instances on one database); one migration list for both.
//! - `drains`: the manual drain switch — channels ops took out of routing, held in memory for
//!   routing's hot path, stored, and reloaded so every instance sees a drain.
//! - `stranded`: open orders bound to an account no channel holds any more; check and reload warn.
//! - `admin`: metrics, health, reload, config, channels, ledgers and their export, events,
//!   explain, and the ops console (`/ui`) on the admin port.
//! - `sandbox`: the built-in simulated WeChat Pay and Alipay (test-only keys).
//! - `app`: wires the modules, hands each its narrow state, owns the registry and the drain.
//! - `domain`, `secret`: shared vocabulary (methods, statuses, money); secret handling and
//!   constant-time token comparison.
//! - `clock`, `ids`: Unix milliseconds and China time; record ids and hex digests.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod app;
pub mod channel;
pub mod clock;
pub mod config;
pub mod context;
pub mod defaults;
pub mod domain;
pub mod drains;
pub mod ids;
pub mod inbound;
pub mod live;
pub mod logging;
pub mod payment;
pub mod reconcile;
pub mod resilience;
pub mod routing;
pub mod sandbox;
pub mod secret;
pub mod server;
pub mod shops;
pub mod statements;
pub mod store;
pub mod stranded;
pub mod webhooks;

/// Test fixtures (`tests/fixtures/`), for unit tests.
#[cfg(test)]
pub(crate) fn fixture(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
    std::fs::read_to_string(format!("{path}{name}"))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// Latency histogram buckets, 1ms to 10s (ARCHITECTURE.md, "Metrics").
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];
