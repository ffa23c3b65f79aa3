//! SQLite's side of the one schema (`store::schema`): applying its texts to a file, in one
//! transaction, and bringing a file from before the migrations' ledger up to date once.

use rusqlite::{params, Connection, OptionalExtension};

use super::backend;
use crate::store::schema::{MIGRATIONS, SQLITE_V1, SQLITE_V4_OPEN_CHECKS};
use crate::store::StoreError;

/// The last step a file from before the ledger is brought to by [`probe_columns`] and
/// `SQLITE_V1` (with V4's repair, run at every start).
const BEFORE_THE_LEDGER: i32 = 4;

/// The migrations' ledger, as on PostgreSQL.
const SQLITE_LEDGER: &str = "
CREATE TABLE schema_migrations (
    version    INTEGER PRIMARY KEY,
    applied_at INTEGER NOT NULL
);
";

/// Brings an SQLite file to the current schema and records each step in
/// `schema_migrations`, all in one transaction (`BEGIN IMMEDIATE`: a second process opening
/// the file at the same moment waits, then finds the steps recorded).
///
/// A file created before the ledger existed (its tables, no `schema_migrations`) is brought
/// to the current columns once by probing them ([`probe_columns`]), the idempotent texts
/// (V1's indexes, V4's repair, V5's tables) run over it, and every version is recorded as applied.
pub(super) fn migrate_sqlite(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(backend)?;
    match apply_sqlite(conn) {
        Ok(()) => conn.execute_batch("COMMIT").map_err(backend),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn apply_sqlite(conn: &Connection) -> Result<(), StoreError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let record = |version: i32| {
        conn.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, now],
        )
        .map(drop)
        .map_err(backend)
    };
    if !sqlite_table(conn, "schema_migrations")? {
        let before_the_ledger = sqlite_table(conn, "payments")?;
        conn.execute_batch(SQLITE_LEDGER).map_err(backend)?;
        if before_the_ledger {
            probe_columns(conn)?;
            conn.execute_batch(SQLITE_V1).map_err(backend)?;
            // The steps the probe and V1 stand for; later ones (newer than the ledger, so
            // never in such a file) run below like on any file.
            for m in MIGRATIONS.iter().filter(|m| m.version <= BEFORE_THE_LEDGER) {
                record(m.version)?;
            }
            tracing::info!(
                "store: an SQLite file from before schema_migrations brought up to date"
            );
        }
    }
    let applied: Vec<i32> = conn
        .prepare("SELECT version FROM schema_migrations")
        .map_err(backend)?
        .query_map([], |row| row.get(0))
        .map_err(backend)?
        .collect::<Result<_, _>>()
        .map_err(backend)?;
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        conn.execute_batch(m.sqlite).map_err(backend)?;
        record(m.version)?;
    }
    conn.execute_batch(SQLITE_V4_OPEN_CHECKS).map_err(backend)?;
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    if let Some(newest) = applied.iter().max().filter(|n| **n > known) {
        tracing::warn!(
            newest,
            known,
            "store: the SQLite file has migrations this payroute does not know; it was written by a newer one"
        );
    }
    Ok(())
}

fn sqlite_table(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
    .map_err(backend)
}

/// Columns added after the first release, for files created before them.
const ADDED_COLUMNS: [(&str, &str, &str); 4] = [
    ("payments", "account", "TEXT"),
    // The reconciliation schedule (unix ms; NULL: not checked any more).
    ("payments", "next_check_at", "INTEGER"),
    ("refunds", "next_check_at", "INTEGER"),
    // Paid after the order had ended (issue 15): 1.
    ("payments", "late", "INTEGER NOT NULL DEFAULT 0"),
];

fn probe_columns(conn: &Connection) -> Result<(), StoreError> {
    for (table, column, kind) in ADDED_COLUMNS {
        let present: bool = conn
            .query_row(
                &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
                params![column],
                |row| row.get(0),
            )
            .map_err(backend)?;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))
                .map_err(backend)?;
            if column == "next_check_at" {
                // Open records from before the schedule existed are checked at once.
                conn.execute_batch(&format!(
                    "UPDATE {table} SET next_check_at = updated_at
                     WHERE status IN ('pending', 'unknown', 'abnormal')"
                ))
                .map_err(backend)?;
            }
        }
    }
    Ok(())
}
