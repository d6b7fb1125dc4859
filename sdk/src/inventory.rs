//! Conveniences over the inventory records.

use crate::{DatabaseInfo, ReplicaIdentity, RoleInfo, ServerInfo, TableInfo};

impl ServerInfo {
    /// A setting's value as pg_settings shows it.
    pub fn setting(&self, name: &str) -> Option<&str> {
        self.settings.iter().find(|s| s.name == name).map(|s| s.value.as_str())
    }

    /// A numeric setting (`max_replication_slots`, …).
    pub fn setting_i64(&self, name: &str) -> Option<i64> {
        self.setting(name)?.parse().ok()
    }

    /// `15` for 15.x, `9.6`-era servers give `9`.
    pub fn major_version(&self) -> u32 {
        self.version_num / 10000
    }

    pub fn role(&self, name: &str) -> Option<&RoleInfo> {
        self.roles.iter().find(|r| r.name == name)
    }

    /// The role the runner connected as.
    pub fn current_role(&self) -> Option<&RoleInfo> {
        self.role(&self.current_user)
    }

    /// True when `role` is `member` or (transitively) a member of it.
    pub fn is_member_of(&self, role: &str, member: &str) -> bool {
        let mut todo = vec![role.to_string()];
        let mut seen = Vec::new();
        while let Some(r) = todo.pop() {
            if r == member {
                return true;
            }
            if seen.contains(&r) {
                continue;
            }
            if let Some(info) = self.role(&r) {
                todo.extend(info.member_of.iter().cloned());
            }
            seen.push(r);
        }
        false
    }

    pub fn database(&self, name: &str) -> Option<&crate::DatabaseSummary> {
        self.databases.iter().find(|d| d.name == name)
    }

    pub fn has_extension_available(&self, name: &str) -> bool {
        self.available_extensions.iter().any(|e| e.name == name)
    }
}

impl TableInfo {
    /// `schema.name`, quoted where PostgreSQL would need it.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// Whether UPDATE and DELETE can be replicated for this table.
    pub fn has_usable_replica_identity(&self) -> bool {
        match self.replica_identity {
            ReplicaIdentity::Default => self.has_primary_key,
            ReplicaIdentity::Index => self.replica_identity_index.is_some(),
            ReplicaIdentity::Full => true,
            ReplicaIdentity::Nothing => false,
        }
    }
}

impl DatabaseInfo {
    pub fn table(&self, schema: &str, name: &str) -> Option<&TableInfo> {
        self.tables.iter().find(|t| t.schema == schema && t.name == name)
    }
}

/// Quotes an identifier the way `quote_ident()` does.
pub fn quote_ident(name: &str) -> String {
    let plain = !name.is_empty()
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}
