//! The integration tests, one binary: one module per area, `support` and `store` compiled
//! once for all of them (one binary per file linked the whole support module ~28 times).
//!
//! Every test starts what it needs on its own 127.0.0.1:0 listeners, temp dirs and
//! PostgreSQL schemas, so they share the process safely; nothing here sets process-wide
//! state (environment variables, a global subscriber). `cargo test --test it NAME` runs a part,
//! e.g. `cargo test --test it money_safety::` or `cargo test --test it store::ledger::`.

mod support;

mod adaptive;
mod alipay;
mod cli;
mod close;
mod config_validation;
mod console;
mod dashboard;
mod drain;
mod durability;
mod errors;
mod late;
mod money_safety;
mod notifications;
mod ops;
mod outbox;
mod ownership;
mod quotas;
mod reconcile;
mod refunds;
mod reload;
mod resilience;
mod routing;
mod sandbox;
mod sandbox_statements;
mod server;
mod shared_limits;
mod shared_store;
mod statements;
mod store;
mod tenancy_alipay;
mod tls;
mod unrecorded;
