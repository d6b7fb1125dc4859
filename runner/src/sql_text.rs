//! How pgferry writes SQL text: identifiers and literals quoted, and the text settings
//! every session that reads or writes values as text runs with (the copy, verification,
//! the replication connection and the apply alike).

/// `"name"`, always quoted: safe for every identifier, however odd.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'value'`, single quotes doubled (standard_conforming_strings, on by default since PostgreSQL 9.1).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Settings that make a row's text the same on both sides, whatever their defaults: set on
/// the sessions that read a table in text format, source and target alike, and on those
/// that write it (so that the text means the same going in as coming out).
const STABLE_TEXT_SETTINGS: [(&str, &str); 6] = [
    ("datestyle", "ISO,MDY"),
    ("intervalstyle", "postgres"),
    ("timezone", "UTC"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
];

/// [`STABLE_TEXT_SETTINGS`] as SQL for a session.
pub fn stable_text() -> String {
    STABLE_TEXT_SETTINGS.iter().map(|(name, value)| format!("SET {name} = '{value}'")).collect::<Vec<_>>().join("; ")
}

/// [`STABLE_TEXT_SETTINGS`] as startup options, for a replication connection: pgoutput
/// writes the changes' values as text with the walsender's settings (a source whose
/// DateStyle is `SQL, DMY` would send 23/11/2026), and the apply reads them under
/// [`stable_text`].
pub fn stable_text_options() -> String {
    STABLE_TEXT_SETTINGS.iter().map(|(name, value)| format!("-c {name}={value}")).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replication_options_are_the_stable_text_settings() {
        let normal = |v: &str| v.replace([' ', '\''], "").to_lowercase();
        let mut sql: Vec<String> = stable_text()
            .split(';')
            .map(|set| set.trim().strip_prefix("SET ").expect("SET name = value"))
            .map(|set| set.split_once('=').map(|(k, v)| format!("{}={}", k.trim(), normal(v))).expect("name = value"))
            .collect();
        let mut options: Vec<String> = stable_text_options().split("-c ").filter(|o| !o.trim().is_empty()).map(|o| normal(o.trim())).collect();
        sql.sort();
        options.sort();
        assert_eq!(sql, options);
    }
}
