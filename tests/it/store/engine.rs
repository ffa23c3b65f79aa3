//! The engines underneath: reopening, migrations between instances, TLS and connections to
//! PostgreSQL, row locks of a stalled peer.

use super::*;

both_stores!(reopening_keeps_everything,);

postgres_only!(
    instances_starting_together_migrate_once,
    tls_is_rustls_and_verified,
    connections_killed_by_the_server_are_replaced,
    a_row_lock_held_by_a_stalled_peer_is_waited_for_a_bounded_time,
    an_instance_waits_out_a_long_migration_of_another,
);

async fn instances_starting_together_migrate_once(ctx: Ctx) {
    drop(ctx);
    let Some(admin) = admin_client().await else {
        return;
    };
    let schema = unique("payroute_test_mig_");
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let schema = schema.clone();
            tokio::spawn(async move {
                PostgresStore::open(&Secret::new(pg_url()), 2, &schema)
                    .await
                    .map(|_| ())
            })
        })
        .collect();
    let mut results = Vec::new();
    for o in opens {
        results.push(o.await.unwrap());
    }
    // One instance alone migrates a reference schema: the four together must leave the same.
    let reference = unique("payroute_test_mig_ref_");
    let alone = PostgresStore::open(&Secret::new(pg_url()), 2, &reference)
        .await
        .map(|_| ());
    let versions = admin
        .query(
            &format!(
                "SELECT version, applied_at FROM \"{schema}\".schema_migrations ORDER BY version"
            ),
            &[],
        )
        .await;
    let columns = |schema: String| {
        let admin = &admin;
        async move {
            admin
                .query(
                    "SELECT table_name::text, column_name::text, data_type::text, \
                            COALESCE(column_default, '') FROM information_schema.columns \
                     WHERE table_schema = $1 ORDER BY 1, 2",
                    &[&schema],
                )
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|r| {
                            let c: (String, String, String, String) =
                                (r.get(0), r.get(1), r.get(2), r.get(3));
                            c
                        })
                        .collect::<Vec<_>>()
                })
        }
    };
    let (together, single) = (
        columns(schema.clone()).await,
        columns(reference.clone()).await,
    );
    for s in [&schema, &reference] {
        admin
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{s}\" CASCADE"))
            .await
            .unwrap();
    }
    // A migration run twice (two instances past the lock) fails the second's ALTER TABLE …
    // ADD COLUMN: every instance must start.
    for r in results {
        r.expect("every instance starts");
    }
    alone.expect("one instance alone starts");
    let rows = versions.unwrap();
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6], "each migration recorded");
    // Applied one after another, in order (under the lock, not interleaved).
    let applied_at: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
    assert!(
        applied_at.windows(2).all(|w| w[0] <= w[1]),
        "migrations applied out of order: {applied_at:?}"
    );
    // Each migration's effects once: the same tables and columns as one instance alone makes.
    let (together, single) = (together.unwrap(), single.unwrap());
    assert!(single.len() > 10, "the reference schema: {single:?}");
    assert_eq!(together, single, "four instances together vs one alone");
}

async fn reopening_keeps_everything(ctx: Ctx) {
    let p = paid(ctx.store.as_ref(), "keep").await;
    ctx.store
        .reserve_refund(&refund(&p, "keep_r", 10), p.amount)
        .await
        .unwrap();
    let Ctx {
        store,
        other,
        place,
        _dir,
        ..
    } = ctx;
    drop((store, other));
    // A restart (SQLite) or another instance starting (PostgreSQL, migrations already
    // applied) reads everything written before.
    let again = place.open().await;
    assert_eq!(again.get_payment("m_1", "keep").await.unwrap().unwrap(), p);
    assert_eq!(
        again
            .get_refund("m_1", "keep_r")
            .await
            .unwrap()
            .unwrap()
            .amount,
        10
    );
}

async fn tls_is_rustls_and_verified(ctx: Ctx) {
    drop(ctx);
    // The machine's PostgreSQL serves Debian's self-signed "snakeoil" certificate for
    // `localhost`: trusted through sslrootcert it verifies; against the default roots it
    // must be refused.
    let Some(admin) = admin_client().await else {
        return;
    };
    let ssl: String = admin.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    let snakeoil = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    let url = pg_url();
    if ssl != "on" || !std::path::Path::new(snakeoil).exists() || !url.contains("@127.0.0.1") {
        // CI's PostgreSQL (Debian's, as `.ci/run` starts it) has ssl=on with the snakeoil
        // certificate: where PostgreSQL is required, so is this test.
        assert!(
            std::env::var("PAYROUTE_REQUIRE_PG").as_deref() != Ok("1"),
            "tls_is_rustls_and_verified needs ssl=on (is {ssl}), {snakeoil} and a 127.0.0.1 url \
             (is {}) and PAYROUTE_REQUIRE_PG=1",
            shown(&url)
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "*** SKIPPED tls_is_rustls_and_verified: needs ssl=on, {snakeoil} and a 127.0.0.1 url ***"
        );
        return;
    }
    let local = url.replace("@127.0.0.1", "@localhost");
    let sep = if local.contains('?') { '&' } else { '?' };
    let schema = unique("payroute_test_tls_");
    let verified = PostgresStore::open(
        &Secret::new(format!(
            "{local}{sep}sslmode=verify-full&sslrootcert={snakeoil}"
        )),
        2,
        &schema,
    )
    .await;
    let refused = PostgresStore::open(
        &Secret::new(format!("{local}{sep}sslmode=require")),
        2,
        &schema,
    )
    .await;
    // verify-ca checks the chain to sslrootcert and, unlike libpq's, the host name too
    // (ConnectSpec's rustdoc): the same certificate verifies by the name it was made for and
    // is refused by an address it does not name.
    let ca_by_name = PostgresStore::open(
        &Secret::new(format!(
            "{local}{sep}sslmode=verify-ca&sslrootcert={snakeoil}"
        )),
        2,
        &schema,
    )
    .await;
    let ca_by_address = PostgresStore::open(
        &Secret::new(format!(
            "{url}{sep}sslmode=verify-ca&sslrootcert={snakeoil}"
        )),
        2,
        &schema,
    )
    .await;
    let checked = async {
        let verified = verified.expect("verify-full against the server's own certificate");
        assert!(
            verified.tls_in_use().await.unwrap(),
            "the connection is encrypted"
        );
        verified.ping().await.unwrap();
        let ca = ca_by_name.expect("verify-ca against the server's own certificate");
        assert!(ca.tls_in_use().await.unwrap(), "verify-ca encrypts");
        ca.ping().await.unwrap();
        let e = ca_by_address
            .err()
            .expect("verify-ca checks the host name: 127.0.0.1 is not in the certificate");
        assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    };
    let checked = tokio::spawn(checked).await;
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .unwrap();
    if let Err(e) = checked {
        std::panic::resume_unwind(e.into_panic());
    }
    let e = refused
        .err()
        .expect("a self-signed certificate is not trusted by default");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    assert!(
        !e.to_string().contains("postgres://"),
        "the url leaked: {e}"
    );
}

async fn connections_killed_by_the_server_are_replaced(ctx: Ctx) {
    let Place::Postgres(schema) = &ctx.place else {
        return;
    };
    let Some(admin) = admin_client().await else {
        return;
    };
    // An instance of its own, named so that only its connections are killed.
    let app = unique("payroute_kill_");
    let url = pg_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let store = PostgresStore::open(
        &Secret::new(format!("{url}{sep}application_name={app}")),
        4,
        schema,
    )
    .await
    .expect("open");
    store.insert_payment(&payment("k1")).await.unwrap();
    let killed: i64 = admin
        .query_one(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1, "the instance had connections");
    // What a restart of PostgreSQL does to an instance: every pooled connection is dead.
    // Calls may fail while the pool finds out (a clear error, never a hang), then the pool
    // connects afresh and nothing written before is lost.
    let mut failures = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match store.get_payment("m_1", "k1").await {
            Ok(Some(p)) => {
                assert_eq!(p.out_trade_no, "k1");
                break;
            }
            Ok(None) => panic!("the payment is gone"),
            Err(e) => {
                failures += 1;
                assert!(!e.to_string().contains("postgres://"), "{e}");
                assert!(
                    e.is_unavailable(),
                    "a lost connection is store_unavailable: {e}"
                );
                assert!(tokio::time::Instant::now() < deadline, "no recovery: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    assert!(
        failures <= 4,
        "{failures} failed calls: at most one per dead connection"
    );
    store.ping().await.unwrap();
    drop(ctx);
}

async fn a_row_lock_held_by_a_stalled_peer_is_waited_for_a_bounded_time(ctx: Ctx) {
    let Place::Postgres(schema) = &ctx.place else {
        return;
    };
    let Some(peer) = admin_client().await else {
        return;
    };
    let store = ctx.store;
    let p = paid(store.as_ref(), "lk1").await;
    // Another instance, paused in the middle of a refund: it holds the payment's row lock
    // and says nothing more.
    peer.batch_execute(&format!(
        "BEGIN; SELECT 1 FROM \"{schema}\".payments WHERE payment_id = '{}' FOR UPDATE",
        p.payment_id
    ))
    .await
    .unwrap();
    // A refund needs that lock: it waits, but not without end, and says the store is busy
    // (retryable) rather than that the request is wrong.
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        store.reserve_refund(&refund(&p, "lk1-r", 100), p.amount),
    )
    .await
    .expect("the refund waited for the lock without end");
    match r {
        Err(StoreError::Unavailable(why)) => assert!(why.contains("55P03"), "{why}"),
        other => panic!("expected Unavailable (lock timeout), got {other:?}"),
    }
    eprintln!("refused after {:?}", started.elapsed());
    // The peer goes on (or its transaction is ended): the same refund then goes through.
    peer.batch_execute("ROLLBACK").await.unwrap();
    assert!(matches!(
        store
            .reserve_refund(&refund(&p, "lk1-r", 100), p.amount)
            .await
            .unwrap(),
        Reservation::Reserved
    ));
}

async fn an_instance_waits_out_a_long_migration_of_another(ctx: Ctx) {
    let Place::Postgres(_) = &ctx.place else {
        return;
    };
    let Some(peer) = admin_client().await else {
        return;
    };
    // Another instance migrating a fresh schema holds the migration lock for 3s, longer than
    // the sessions' lock_timeout: starting meanwhile waits for it instead of failing.
    let schema = unique("payroute_slowmig_");
    let key = format!("payroute.migrate.{schema}");
    peer.execute("SELECT pg_advisory_lock(hashtext($1))", &[&key])
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let released = std::time::Instant::now();
        peer.execute("SELECT pg_advisory_unlock(hashtext($1))", &[&key])
            .await
            .unwrap();
        (peer, released)
    });
    let opened = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        PostgresStore::open(&Secret::new(pg_url()), 2, &schema),
    )
    .await
    .expect("open waited without end");
    let open_returned = std::time::Instant::now();
    let (peer, released) = release.await.unwrap();
    let served = match &opened {
        Ok(store) => store.get_payment("m_1", "none").await.map(|p| p.is_none()),
        Err(_) => Ok(false),
    };
    let _ = peer
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await;
    opened.expect("the instance started once the migration lock was free");
    // It waited: its start ended only after the other instance let go of the lock (the
    // instant is taken before the unlock is sent, so an open that returned earlier did not
    // wait for it).
    assert!(
        open_returned > released,
        "the instance started {:?} before the migration lock was released",
        released.saturating_duration_since(open_returned)
    );
    assert!(served.unwrap(), "and serves from the migrated schema");
}
