//! Conveniences over the inventory records.

use std::cmp::Ordering;

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

    /// A memory or time setting in base units: bytes for memory, milliseconds for time.
    ///
    /// pg_settings gives a bare number and a unit such as `8kB` or `ms`; a hand-written value
    /// may carry its own unit (`64MB`, `10s`); `default_unit` is pg_settings' unit for this
    /// setting, used when neither says. Units: `B`, `kB`, `MB`, `GB`, `TB`, `ms`, `s`, `min`,
    /// `h`, `d`, optionally with a multiplier (`8kB` pages, `16MB` WAL segments). Negative
    /// values (`-1`: unlimited or disabled) come back unscaled. `None` when the setting is
    /// missing or does not parse.
    pub fn setting_quantity(&self, name: &str, default_unit: &str) -> Option<i64> {
        let setting = self.settings.iter().find(|s| s.name == name)?;
        let value = setting.value.trim();
        let split = value.find(|c: char| !(c.is_ascii_digit() || c == '-')).unwrap_or(value.len());
        let (number, suffix) = value.split_at(split);
        let number: i64 = number.parse().ok()?;
        if number < 0 {
            return Some(number);
        }
        let unit = [suffix.trim(), setting.unit.as_str(), default_unit].into_iter().find(|u| !u.is_empty()).unwrap_or("");
        let split = unit.find(|c: char| !c.is_ascii_digit()).unwrap_or(unit.len());
        let (multiplier, unit) = unit.split_at(split);
        let multiplier: i64 = if multiplier.is_empty() { 1 } else { multiplier.parse().ok()? };
        let scale = match unit {
            "" | "B" | "ms" => 1,
            "kB" => 1 << 10,
            "MB" => 1 << 20,
            "GB" => 1 << 30,
            "TB" => 1 << 40,
            "s" => 1_000,
            "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        Some(number * multiplier * scale)
    }

    /// `15` for 15.x, `9.6`-era servers give `9` (see [`major_name`](Self::major_name) for
    /// telling 9.5 from 9.6).
    pub fn major_version(&self) -> u32 {
        self.version_num / 10000
    }

    /// The major release as PostgreSQL names it: `9.6` before 10, `15` from 10 on.
    pub fn major_name(&self) -> String {
        let v = self.version_num;
        if v >= 100_000 { (v / 10_000).to_string() } else { format!("{}.{}", v / 10_000, v / 100 % 100) }
    }

    /// The major release's place in release order (9.5 → 8, 9.6 → 9, 10 → 10, 11 → 11, …),
    /// so that the difference of two ranks counts major releases across the change of
    /// numbering at 10 (9.5 and 9.6 are two majors; 9.6 → 10 is one step).
    pub fn major_rank(&self) -> i64 {
        let v = i64::from(self.version_num);
        if v >= 100_000 { v / 10_000 } else { v / 100 - 897 }
    }

    /// `host:port`, how findings name a server.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
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

    /// Whether this server's operating system provides a libc locale, compared as
    /// [`normalize_locale`] does (`en_US.UTF-8` is `en_US.utf8`). `C`, `POSIX` and `C.UTF-8`
    /// always exist; otherwise pg_collation lists the locales found at initdb (or by
    /// `pg_import_system_collations`), and the LC_COLLATE and LC_CTYPE of existing databases
    /// prove theirs. Meaningful only when `collations` was read (a real pg_collation is never
    /// empty).
    pub fn has_locale(&self, locale: &str) -> bool {
        let wanted = normalize_locale(locale);
        let is = |l: &str| normalize_locale(l) == wanted;
        ["C", "POSIX", "C.UTF-8"].into_iter().any(is)
            || self
                .collations
                .iter()
                .filter(|c| c.provider == "libc")
                .any(|c| is(&c.name) || c.collate.as_deref().is_some_and(is))
            || self.databases.iter().any(|d| is(&d.collate) || is(&d.ctype))
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

/// glibc's normalised locale name, so that `en_US.UTF-8`, `en_US.utf8` and `en_US.UTF8` are
/// one locale: the codeset is lowercased and stripped of everything but letters and digits;
/// the language and a `@modifier` are kept as they are.
pub fn normalize_locale(locale: &str) -> String {
    let (base, modifier) = locale.split_once('@').map_or((locale, None), |(b, m)| (b, Some(m)));
    let mut out = match base.split_once('.') {
        Some((lang, codeset)) => {
            let codeset: String = codeset.chars().filter(char::is_ascii_alphanumeric).collect();
            format!("{lang}.{}", codeset.to_ascii_lowercase())
        }
        None => base.to_string(),
    };
    if let Some(m) = modifier {
        out.push('@');
        out.push_str(m);
    }
    out
}

/// Compares version strings (an extension's `1.10`, `3.4.0dev`) by their numeric parts:
/// `1.10` > `1.9`, `3.4.0` = `3.4`; anything that is not a digit only separates parts.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let parts = |v: &str| {
        let mut n: Vec<u64> =
            v.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect();
        // Trailing zeros do not make a version newer.
        while n.last() == Some(&0) {
            n.pop();
        }
        n
    };
    parts(a).cmp(&parts(b))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{database_summary, server, set_setting};
    use crate::{CollationInfo, Side};

    #[test]
    fn quantities_scale_by_unit() {
        let mut s = server(Side::Source, 160000);
        set_setting(&mut s, "shared_buffers", "16384").unit = "8kB".into();
        set_setting(&mut s, "wal_sender_timeout", "5s");
        set_setting(&mut s, "max_slot_wal_keep_size", "-1").unit = "MB".into();
        set_setting(&mut s, "logical_decoding_work_mem", "64MB").unit = "kB".into();
        set_setting(&mut s, "statement_timeout", "2 min");
        set_setting(&mut s, "work_mem", "4096");
        set_setting(&mut s, "bogus", "12 parsecs");
        assert_eq!(s.setting_quantity("shared_buffers", ""), Some(128 << 20));
        assert_eq!(s.setting_quantity("wal_sender_timeout", "ms"), Some(5_000));
        assert_eq!(s.setting_quantity("max_slot_wal_keep_size", "MB"), Some(-1));
        // The value's own unit wins over pg_settings'.
        assert_eq!(s.setting_quantity("logical_decoding_work_mem", "kB"), Some(64 << 20));
        assert_eq!(s.setting_quantity("statement_timeout", "ms"), Some(120_000));
        // A bare number without a pg_settings unit is in the default unit.
        assert_eq!(s.setting_quantity("work_mem", "kB"), Some(4 << 20));
        assert_eq!(s.setting_quantity("bogus", ""), None);
        assert_eq!(s.setting_quantity("missing", "ms"), None);
    }

    #[test]
    fn majors_count_across_the_renumbering() {
        let mut s = server(Side::Source, 90624);
        assert_eq!((s.major_name(), s.major_rank(), s.major_version()), ("9.6".to_string(), 9, 9));
        s.version_num = 90525;
        assert_eq!((s.major_name(), s.major_rank()), ("9.5".to_string(), 8));
        s.version_num = 100023;
        assert_eq!((s.major_name(), s.major_rank()), ("10".to_string(), 10));
        s.version_num = 150018;
        assert_eq!((s.major_name(), s.major_rank()), ("15".to_string(), 15));
        assert_eq!(s.address(), "127.0.0.1:5432");
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_cmp("1.10", "1.9").is_gt());
        assert!(version_cmp("3.4.0", "3.4").is_eq());
        assert!(version_cmp("3.3.2", "3.4.0dev").is_lt());
        assert!(version_cmp("2.0", "10").is_lt());
    }

    #[test]
    fn locales_normalise_like_glibc() {
        assert_eq!(normalize_locale("en_US.UTF-8"), "en_US.utf8");
        assert_eq!(normalize_locale("en_US.UTF8"), "en_US.utf8");
        assert_eq!(normalize_locale("de_DE.ISO-8859-1@euro"), "de_DE.iso88591@euro");
        assert_eq!(normalize_locale("C"), "C");
    }

    #[test]
    fn locales_come_from_collations_and_databases() {
        let mut t = server(Side::Target, 150000);
        let libc = |name: &str| CollationInfo {
            schema: "pg_catalog".into(),
            name: name.into(),
            provider: "libc".into(),
            collate: Some(name.into()),
            ctype: Some(name.into()),
            encoding: "6".into(),
        };
        t.collations = vec![libc("en_US.utf8"), CollationInfo { provider: "icu".into(), ..libc("fr_FR.utf8") }];
        for always in ["C", "POSIX", "C.UTF-8", "C.utf8"] {
            assert!(t.has_locale(always), "{always}");
        }
        assert!(t.has_locale("en_US.UTF-8"));
        assert!(!t.has_locale("fr_FR.UTF-8"), "an ICU collation proves no libc locale");
        assert!(!t.has_locale("de_DE.UTF-8"));
        let mut db = database_summary("existing");
        db.collate = "C".into();
        db.ctype = "de_DE.UTF-8".into();
        t.databases.push(db);
        assert!(t.has_locale("de_DE.utf8"));
    }
}
