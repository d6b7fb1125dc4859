//! Premigration rules for online migrations: what logical replication needs from the
//! source (wal_level, free slots and senders, the REPLICATION privilege, replica identity on
//! every table, no blocking transactions) and what it does not carry over. Every rule runs
//! in `Online` mode only. Codes and remediations are documented in README.md.

use pgferry_sdk::*;

#[cfg(test)]
mod tests;

/// Transactions older than this block the creation of the replication slot long enough to
/// be worth a warning.
const MAX_XACT_AGE_SECONDS: u64 = 600;

/// Below this, the decoding of a moderately large transaction spills to disk.
const MIN_DECODING_MEM: i64 = 64 << 20;

#[derive(Default)]
pub struct WalLevel;

impl Rule for WalLevel {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::instance("wal-level", "The source's wal_level is logical").only_in(MigrationMode::Online)
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let level = cx.source().setting("wal_level").unwrap_or("unknown");
        if level == "logical" {
            return Ok(vec![]);
        }
        Ok(vec![
            error(
                "wal-level-not-logical",
                format!("the source's wal_level is `{level}`; logical replication needs `logical`"),
            )
            .on("wal_level")
            .fix("On the source: ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL."),
        ])
    }
}

#[derive(Default)]
pub struct ReplicationCapacity;

impl Rule for ReplicationCapacity {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::instance(
            "replication-capacity",
            "The source has a free replication slot and WAL sender per database",
        )
        .only_in(MigrationMode::Online)
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let source = cx.source();
        let needed = cx.check.dbs_to_migrate.len() as i64;
        let slots = source.setting_i64("max_replication_slots").unwrap_or(10);
        let senders = source.setting_i64("max_wal_senders").unwrap_or(10);
        let free_slots = slots - i64::from(source.replication_slots_used);
        let free_senders = senders - i64::from(source.wal_senders_used);
        let mut out = vec![];
        // One slot and one streaming connection per migrated database.
        if free_slots < needed {
            out.push(
                error(
                    "replication-slots-insufficient",
                    format!(
                        "the source has {free_slots} free replication slots (max_replication_slots {slots}, {} in use) for {needed} databases",
                        source.replication_slots_used
                    ),
                )
                .on("max_replication_slots")
                .fix(format!(
                    "On the source: ALTER SYSTEM SET max_replication_slots = {}; and restart, or drop unused slots (SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active AND …).",
                    i64::from(source.replication_slots_used) + needed
                )),
            );
        }
        if free_senders < needed {
            out.push(
                error(
                    "wal-senders-insufficient",
                    format!(
                        "the source has {free_senders} free WAL senders (max_wal_senders {senders}, {} in use) for {needed} databases",
                        source.wal_senders_used
                    ),
                )
                .on("max_wal_senders")
                .fix(format!(
                    "On the source: ALTER SYSTEM SET max_wal_senders = {}; and restart.",
                    i64::from(source.wal_senders_used) + needed
                )),
            );
        }
        if senders < slots {
            out.push(
                warning("wal-senders-below-slots", format!("max_wal_senders ({senders}) is lower than max_replication_slots ({slots}): not every slot can be streamed at once"))
                    .on("max_wal_senders")
                    .fix(format!("On the source: ALTER SYSTEM SET max_wal_senders = {slots}; and restart.")),
            );
        }
        Ok(out)
    }
}

#[derive(Default)]
pub struct ReplicationPrivilege;

impl Rule for ReplicationPrivilege {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::instance("replication-privilege", "The source role may replicate")
            .only_in(MigrationMode::Online)
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let source = cx.source();
        let user = &source.current_user;
        if source.current_role().is_some_and(|r| r.superuser || r.replication) {
            return Ok(vec![]);
        }
        // Source adapters refine this finding (same code) with their provider's replication roles.
        Ok(vec![
            error(
                "replication-privilege-missing",
                format!("source role `{user}` is neither superuser nor has the REPLICATION attribute"),
            )
            .on(user)
            .fix(format!("As a superuser on the source: ALTER ROLE {} WITH REPLICATION;", quote_ident(user))),
        ])
    }
}

#[derive(Default)]
pub struct TableReplicaIdentity;

impl Rule for TableReplicaIdentity {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::database("replica-identity", "Every table can replicate UPDATE and DELETE")
            .only_in(MigrationMode::Online)
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        // A database missing on the source is rules-server's `source-databases` business.
        let Some(db) = cx.database() else { return Ok(vec![]) };
        let mut out = vec![];
        // Partitioned parents hold no rows and unlogged tables are not published at all.
        for t in db.tables.iter().filter(|t| t.kind == RelationKind::Table && !t.unlogged) {
            let q = t.qualified_name();
            if !t.has_usable_replica_identity() {
                let fix = if t.has_unique_not_null_index {
                    format!(
                        "On the source: ALTER TABLE {q} ADD PRIMARY KEY (…); or use its unique index: ALTER TABLE {q} REPLICA IDENTITY USING INDEX <index>;"
                    )
                } else {
                    format!(
                        "On the source: ALTER TABLE {q} ADD PRIMARY KEY (…); or ALTER TABLE {q} REPLICA IDENTITY FULL;"
                    )
                };
                out.push(
                    error("replica-identity-missing", format!("table {q} has no primary key or usable replica identity: its UPDATEs and DELETEs cannot be replicated"))
                        .on(&q)
                        .fix(fix),
                );
            } else if t.replica_identity == ReplicaIdentity::Full {
                let fix = if t.has_primary_key {
                    format!("It has a primary key: ALTER TABLE {q} REPLICA IDENTITY DEFAULT; on the source.")
                } else {
                    format!("Add a primary key on the source: ALTER TABLE {q} ADD PRIMARY KEY (…);")
                };
                out.push(
                    info("replica-identity-full", format!("table {q} has REPLICA IDENTITY FULL: every UPDATE and DELETE logs the whole row and is applied more slowly"))
                        .on(&q)
                        .fix(fix),
                );
            }
        }
        Ok(out)
    }
}

#[derive(Default)]
pub struct UnreplicatedObjects;

impl Rule for UnreplicatedObjects {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::database("unreplicated-objects", "Data that logical replication does not carry")
            .only_in(MigrationMode::Online)
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let Some(db) = cx.database() else { return Ok(vec![]) };
        let mut out = vec![];
        for t in &db.tables {
            let q = t.qualified_name();
            if t.unlogged {
                out.push(
                    warning("unlogged-table", format!("table {q} is UNLOGGED: it is copied once by the base copy, later changes are not replicated"))
                        .on(&q)
                        .fix(format!("On the source before the migration: ALTER TABLE {q} SET LOGGED; or reload it on the target after cutover.")),
                );
            }
            if t.kind == RelationKind::MaterializedView {
                out.push(
                    info(
                        "materialized-view",
                        format!("materialized view {q} is not replicated; it is refreshed on the target at cutover"),
                    )
                    .on(&q)
                    .fix(format!(
                        "Nothing to do; to query it on the target before cutover: REFRESH MATERIALIZED VIEW {q};"
                    )),
                );
            }
        }
        if db.large_object_count > 0 {
            out.push(
                warning(
                    "large-objects",
                    format!(
                        "database `{}` has {} large objects: logical decoding does not carry them, so they are copied once by the base copy and later changes are lost",
                        db.name, db.large_object_count
                    ),
                )
                .on(&db.name)
                .fix("Stop writing large objects from the start of the migration until cutover, or store the data in bytea columns instead."),
            );
        }
        Ok(out)
    }
}

#[derive(Default)]
pub struct SourceTransactions;

impl Rule for SourceTransactions {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::instance("source-transactions", "No transaction blocks the creation of the replication slot")
            .only_in(MigrationMode::Online)
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let source = cx.source();
        let mut out = vec![];
        if source.prepared_xacts > 0 {
            out.push(
                error(
                    "prepared-transactions",
                    format!("{} prepared transactions are pending on the source; creating the replication slot waits until they end", source.prepared_xacts),
                )
                .on(source.address())
                .fix("On the source: SELECT gid, prepared, owner, database FROM pg_prepared_xacts; then COMMIT PREPARED 'gid'; or ROLLBACK PREPARED 'gid'; for each."),
            );
        }
        let age = source.oldest_xact_age_seconds;
        if age > MAX_XACT_AGE_SECONDS {
            out.push(
                warning(
                    "long-running-transaction",
                    format!("the oldest open transaction on the source has run for {age} s; creating the replication slot waits until it ends"),
                )
                .on(source.address())
                .fix(format!(
                    "On the source: SELECT pid, usename, datname, xact_start, state, query FROM pg_stat_activity WHERE xact_start < now() - interval '{MAX_XACT_AGE_SECONDS} seconds'; then end them, or SELECT pg_terminate_backend(pid);"
                )),
            );
        }
        Ok(out)
    }
}

#[derive(Default)]
pub struct ReplicationSettings;

impl Rule for ReplicationSettings {
    fn describe(&self) -> RuleDescriptor {
        RuleDescriptor::instance(
            "replication-settings",
            "The source's WAL retention and sender settings suit a long-running slot",
        )
        .only_in(MigrationMode::Online)
    }

    fn check(&self, cx: &Context) -> Result<Vec<Finding>, String> {
        let source = cx.source();
        let mut out = vec![];
        // The setting exists from PostgreSQL 13; before it, retention is unlimited anyway.
        if source.setting_quantity("max_slot_wal_keep_size", "MB") == Some(-1) {
            out.push(
                info("slot-wal-unlimited", "max_slot_wal_keep_size is -1: the migration's replication slot retains WAL as long as the target lags, until the source's disk fills")
                    .on("max_slot_wal_keep_size")
                    .fix("Watch the source's free disk space during the migration, or cap the retention: ALTER SYSTEM SET max_slot_wal_keep_size = '100GB'; SELECT pg_reload_conf(); (a slot past the cap is invalidated and the migration must start again)."),
            );
        }
        // 0 disables the timeout.
        if let Some(ms) = source.setting_quantity("wal_sender_timeout", "ms").filter(|&ms| ms > 0 && ms < 10_000) {
            out.push(
                warning(
                    "wal-sender-timeout-short",
                    format!("wal_sender_timeout is {ms} ms: a busy apply can be disconnected; use at least 10 s"),
                )
                .on("wal_sender_timeout")
                .fix("On the source: ALTER SYSTEM SET wal_sender_timeout = '60s'; SELECT pg_reload_conf();"),
            );
        }
        if let Some(bytes) =
            source.setting_quantity("logical_decoding_work_mem", "kB").filter(|&b| (0..MIN_DECODING_MEM).contains(&b))
        {
            out.push(
                info(
                    "logical-decoding-work-mem-low",
                    format!(
                        "logical_decoding_work_mem is {} kB: large transactions spill to disk while they are decoded",
                        bytes >> 10
                    ),
                )
                .on("logical_decoding_work_mem")
                .fix("On the source: ALTER SYSTEM SET logical_decoding_work_mem = '256MB'; SELECT pg_reload_conf();"),
            );
        }
        Ok(out)
    }
}

export_rules!(
    WalLevel,
    ReplicationCapacity,
    ReplicationPrivilege,
    TableReplicaIdentity,
    UnreplicatedObjects,
    SourceTransactions,
    ReplicationSettings,
);
