//! How `create` shows copy progress: bars on a terminal (per database: bytes, throughput,
//! ETA, tables done), plain lines in a pipe, JSON lines with `--output json`. All on stderr,
//! so stdout keeps the one result document.

use std::collections::HashMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::migration::migrating_data::Progress;
use crate::migration::Observer;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum View {
    Bars,
    Lines,
    Json,
}

impl View {
    pub fn choose(json: bool) -> View {
        if json {
            View::Json
        } else if std::io::stderr().is_terminal() {
            View::Bars
        } else {
            View::Lines
        }
    }

    pub fn observer(self) -> Observer {
        match self {
            View::Json => Box::new(|event: &Progress| {
                if let Ok(line) = serde_json::to_string(event) {
                    eprintln!("{line}");
                }
            }),
            View::Lines => Box::new(|event: &Progress| eprintln!("{}", line(event))),
            View::Bars => {
                let multi = MultiProgress::new();
                let mut bars: HashMap<String, (ProgressBar, usize, usize)> = HashMap::new();
                let mut parts_seen: HashMap<String, usize> = HashMap::new();
                // Bytes shown so far of each (part of a) table still streaming.
                let mut streamed: HashMap<String, u64> = HashMap::new();
                let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}")
                    .expect("template")
                    .progress_chars("=> ");
                Box::new(move |event: &Progress| match event {
                    Progress::DatabaseStarted { database, tables_total, bytes_total, .. } => {
                        let bar = multi.add(ProgressBar::new(*bytes_total).with_style(style.clone()).with_prefix(database.clone()));
                        bar.set_message(format!("0/{tables_total} tables"));
                        bars.insert(database.clone(), (bar, 0, *tables_total));
                    }
                    Progress::TableCopied { database, table } => {
                        let parts = parts_seen.entry(format!("{database}\0{}.{}", table.schema, table.name)).or_default();
                        if let Some((bar, done, total)) = bars.get_mut(database) {
                            *parts += 1;
                            if (*parts).is_multiple_of(table.parts) {
                                *done += 1;
                            }
                            // COPY's binary stream is not the on-disk size: grow the bar if needed.
                            let shown = streamed.remove(&format!("{database}\0{}.{}\0{:?}", table.schema, table.name, table.part)).unwrap_or(0);
                            let pos = bar.position() - shown.min(bar.position()) + table.bytes;
                            if pos > bar.length().unwrap_or(0) {
                                bar.set_length(pos);
                            }
                            bar.set_position(pos);
                            bar.set_message(format!("{done}/{total} tables, last {}.{}", table.schema, table.name));
                            if done == total {
                                bar.finish_with_message(format!("{total}/{total} tables copied"));
                            }
                        }
                    }
                    Progress::TableBytes { database, schema, name, part, bytes } => {
                        if let Some((bar, _, _)) = bars.get(database) {
                            let before = streamed.insert(format!("{database}\0{schema}.{name}\0{part:?}"), *bytes).unwrap_or(0);
                            let pos = bar.position() - before.min(bar.position()) + bytes;
                            if pos > bar.length().unwrap_or(0) {
                                bar.set_length(pos);
                            }
                            bar.set_position(pos);
                        }
                    }
                    Progress::Replicating { .. } | Progress::TablesRecopying { .. } => {
                        let _ = multi.println(line(event));
                    }
                    Progress::TableFailed { database, schema, name, .. } => {
                        if let Some((bar, _, _)) = bars.get(database) {
                            bar.abandon_with_message(format!("copying {schema}.{name} failed"));
                        }
                    }
                    Progress::StageReached { .. } | Progress::TableStarted { .. } | Progress::VerificationStarted { .. } | Progress::Analyzed { .. } => {}
                })
            }
        }
    }
}

fn line(event: &Progress) -> String {
    match event {
        Progress::StageReached { database, stage } => format!("{database}: {stage:?}"),
        Progress::TableStarted { database, schema, name } => format!("{database}: copying {schema}.{name}"),
        Progress::DatabaseStarted { database, tables_total, bytes_total, snapshot } => {
            format!("{database}: copying {tables_total} tables ({bytes_total} bytes on disk) at snapshot {snapshot}")
        }
        Progress::Replicating { database, transactions, inserts, updates, deletes, latency_seconds, wal_bytes_pending } => {
            let pending = wal_bytes_pending.map(|b| format!(", {b} WAL bytes pending")).unwrap_or_default();
            format!("{database}: replicating: {transactions} transactions applied ({inserts} inserts, {updates} updates, {deletes} deletes), latency {latency_seconds:.1}s{pending}")
        }
        Progress::TablesRecopying { database, tables } => {
            format!("{database}: {} tables finished by an earlier run differ from the source at this run's snapshot, copying them again: {}", tables.len(), tables.join(", "))
        }
        Progress::VerificationStarted { database, tables_total } => format!("{database}: verifying {tables_total} tables"),
        Progress::Analyzed { database, tables, seconds } => format!("{database}: analyzed {tables} tables in {seconds:.1} s"),
        Progress::TableFailed { database, schema, name, error } => format!("{database}: copying {schema}.{name} failed: {error}"),
        Progress::TableBytes { database, schema, name, part, bytes } => {
            let part = part.map(|p| format!(" (part from block {p})")).unwrap_or_default();
            format!("{database}: copying {schema}.{name}{part}: {bytes} bytes so far")
        }
        Progress::TableCopied { database, table } => {
            let part = table.part.map(|p| format!(" (part from block {p})")).unwrap_or_default();
            format!("{database}: copied {}.{}{part}: {} rows, {} bytes in {:.2}s", table.schema, table.name, table.rows, table.bytes, table.seconds)
        }
    }
}
