//! Logical replication for online migrations: the source's publication and slot
//! ([`slot`]), the change stream behind a small trait of our own ([`stream`]), the pgoutput
//! decoder ([`pgoutput`]) and the apply side on the target ([`apply`]).

pub mod apply;
pub mod pgoutput;
pub mod slot;
pub mod stream;

pub use pgoutput::Lsn;

/// What one database's replication is called on both servers: derived from the migration's
/// id and the database's position, so they are plain identifiers whatever the names.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Names {
    /// Logical replication slot on the source.
    pub slot: String,
    /// Publication on the source (in the migrated database).
    pub publication: String,
    /// Replication origin on the target: where applying got to, committed with the changes.
    pub origin: String,
}

impl Names {
    pub fn new(migration_id: i64, database_index: usize) -> Names {
        let base = format!("pgferry_{migration_id}_{database_index}");
        Names { slot: base.clone(), publication: base.clone(), origin: base }
    }
}

/// The prefix of the cutover fence, a transactional logical message on the source.
pub const FENCE_PREFIX: &str = "pgferry.fence";
