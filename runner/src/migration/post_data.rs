//! Post-data, split by table: which entries of the post-data archive build one copied
//! table's indexes and keys (primary key, unique and exclusion constraints), so that they
//! run as soon as that table's data has landed, while other tables are still copying (as
//! pgcopydb does). Everything else (foreign keys, triggers, rules, policies, comments,
//! grants, the indexes of partitioned parents and their attachments) runs after the copy,
//! from the same archive, less what was built already.
//!
//! pg_dump stays the source of truth for the DDL: the archive is dumped at the copy's
//! snapshot and each entry is run as pg_restore writes it (`pg_restore --verbose --file -`
//! marks each entry with its TOC id), with the session settings pg_restore sets before it
//! (default_tablespace, default_table_access_method). PostgreSQL's own parser
//! (libpg_query) decides which table an entry is about; an entry that is anything but an
//! index or such a key on one copied table is left to pg_restore.

use std::collections::{BTreeMap, HashSet};

use pg_query::protobuf::{node::Node as N, AlterTableType, ConstrType, ObjectType};

/// One archive entry that builds an index or key of one table.
#[derive(Clone, Debug, PartialEq)]
pub struct TableEntry {
    /// Its TOC id (`pg_restore --list`'s first column): left out of the restore after the copy.
    pub id: u32,
    /// The session settings pg_restore had set for it, then its SQL.
    pub sql: String,
}

/// `(schema, name)` of a table.
pub type TableKey = (String, String);

/// The entries of `plain` (the post-data archive as `pg_restore --verbose --file -` writes
/// it) that build the indexes and keys of the tables in `tables`, per table, in archive order.
pub fn table_entries(plain: &str, tables: &HashSet<TableKey>) -> BTreeMap<TableKey, Vec<TableEntry>> {
    let mut by_table: BTreeMap<TableKey, Vec<TableEntry>> = BTreeMap::new();
    let mut settings: BTreeMap<&str, &str> = BTreeMap::new();
    let mut entry: Option<(u32, u32, Vec<&str>)> = None;
    let mut in_header = false;
    let mut finish = |entry: &mut Option<(u32, u32, Vec<&str>)>, settings: &BTreeMap<&str, &str>| {
        if let Some((id, class, body)) = entry.take() {
            let sql = body.join("\n");
            if let Some(table) = builds_on(class, &sql, tables) {
                let prefix: String = settings.values().map(|s| format!("{s}\n")).collect();
                by_table.entry(table).or_default().push(TableEntry { id, sql: format!("{prefix}{}", sql.trim()) });
            }
        }
    };
    for line in plain.lines() {
        if let Some(rest) = line.strip_prefix("-- TOC entry ") {
            finish(&mut entry, &settings);
            // `-- TOC entry 3213 (class 2606 OID 16393)`
            let mut words = rest.split(' ');
            let id = words.next().and_then(|w| w.parse().ok());
            let class = words.nth(1).and_then(|w| w.parse().ok());
            entry = id.zip(class).map(|(id, class)| (id, class, Vec::new()));
            in_header = true;
            continue;
        }
        if in_header {
            in_header = line.starts_with("--");
            continue;
        }
        // What pg_restore sets between entries, for the entries after it.
        for setting in ["default_tablespace", "default_table_access_method"] {
            if line.starts_with(&format!("SET {setting} = ")) {
                finish(&mut entry, &settings);
                settings.insert(setting, line);
            }
        }
        if line == "--" {
            // The start of the next entry's header (a body has no such line).
            finish(&mut entry, &settings);
        } else if let Some((_, _, body)) = entry.as_mut()
            // Not settings, comments (`-- Completed on`) or psql's `\unrestrict`.
            && !line.starts_with("SET ")
            && !line.starts_with("-- ")
            && !line.starts_with('\\')
        {
            body.push(line);
        }
    }
    finish(&mut entry, &settings);
    by_table
}

/// The table an archive entry of catalog class `class` builds an index or key on, when it
/// does only that, on a table in `tables`.
fn builds_on(class: u32, sql: &str, tables: &HashSet<TableKey>) -> Option<TableKey> {
    const PG_CLASS: u32 = 1259; // an INDEX entry
    const PG_CONSTRAINT: u32 = 2606; // a CONSTRAINT (or FK CONSTRAINT) entry
    if class != PG_CLASS && class != PG_CONSTRAINT {
        return None;
    }
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).ok()?;
    let mut table: Option<TableKey> = None;
    let mut same_table = |relation: &Option<pg_query::protobuf::RangeVar>| -> bool {
        let Some(r) = relation else { return false };
        let key = (r.schemaname.clone(), r.relname.clone());
        match &table {
            Some(t) => *t == key,
            None => {
                table = Some(key);
                true
            }
        }
    };
    for raw in &parsed.protobuf.stmts {
        let ok = match raw.stmt.as_ref().and_then(|s| s.node.as_ref())? {
            // Not `ON ONLY` (a partitioned parent's, attached to later).
            N::IndexStmt(index) => index.relation.as_ref().is_some_and(|r| r.inh) && same_table(&index.relation),
            N::AlterTableStmt(alter) if alter.objtype == ObjectType::ObjectTable as i32 => {
                same_table(&alter.relation)
                    && alter.cmds.iter().all(|cmd| match cmd.node.as_ref() {
                        Some(N::AlterTableCmd(cmd)) => match AlterTableType::try_from(cmd.subtype) {
                            Ok(AlterTableType::AtAddConstraint) => matches!(
                                cmd.def.as_ref().and_then(|d| d.node.as_ref()),
                                Some(N::Constraint(c)) if [ConstrType::ConstrPrimary as i32, ConstrType::ConstrUnique as i32, ConstrType::ConstrExclusion as i32].contains(&c.contype)
                            ),
                            Ok(AlterTableType::AtClusterOn | AlterTableType::AtReplicaIdentity) => true,
                            _ => false,
                        },
                        _ => false,
                    })
            }
            // An index entry's `ALTER INDEX … ALTER COLUMN n SET STATISTICS`.
            N::AlterTableStmt(alter) if alter.objtype == ObjectType::ObjectIndex as i32 => alter.cmds.iter().all(|cmd| {
                matches!(cmd.node.as_ref(), Some(N::AlterTableCmd(cmd)) if cmd.subtype == AlterTableType::AtSetStatistics as i32)
            }),
            _ => false,
        };
        if !ok {
            return None;
        }
    }
    table.filter(|t| tables.contains(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What pg_restore 15 wrote for a small database (trimmed), names with spaces and quotes
    /// included.
    const PLAIN: &str = r#"SET statement_timeout = 0;
SELECT pg_catalog.set_config('search_path', '', false);

SET default_tablespace = '';

--
-- TOC entry 3213 (class 2606 OID 16393)
-- Name: We ird We ird_b_key; Type: CONSTRAINT; Schema: public; Owner: postgres
-- Data Pos: 0
--

ALTER TABLE ONLY public."We ird"
    ADD CONSTRAINT "We ird_b_key" UNIQUE (b);


--
-- TOC entry 3219 (class 2606 OID 16403)
-- Name: p p_pkey; Type: CONSTRAINT; Schema: public; Owner: postgres
-- Data Pos: 0
--

ALTER TABLE ONLY public.p
    ADD CONSTRAINT p_pkey PRIMARY KEY (id);


SET default_tablespace = fast;

--
-- TOC entry 3211 (class 1259 OID 16394)
-- Name: We ird_a_idx; Type: INDEX; Schema: public; Owner: postgres
-- Data Pos: 0
--

CREATE INDEX "We ird_a_idx" ON public."We ird" USING btree (a);

ALTER INDEX public."We ird_a_idx" ALTER COLUMN 1 SET STATISTICS 500;


SET default_tablespace = '';

--
-- TOC entry 3217 (class 1259 OID 16406)
-- Name: p_k_idx; Type: INDEX; Schema: public; Owner: postgres
-- Data Pos: 0
--

CREATE INDEX p_k_idx ON ONLY public.p USING btree (k);


--
-- TOC entry 3379 (class 0 OID 0)
-- Dependencies: 3216
-- Name: INDEX wa; Type: COMMENT; Schema: public; Owner: postgres
-- Data Pos: 0
--

COMMENT ON INDEX public."We ird_a_idx" IS 'hi';


--
-- TOC entry 3226 (class 2606 OID 16411)
-- Name: c c_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: postgres
-- Data Pos: 0
--

ALTER TABLE ONLY public.c
    ADD CONSTRAINT c_id_fkey FOREIGN KEY (id) REFERENCES public."We ird"(id);


--
-- TOC entry 3230 (class 2606 OID 16420)
-- Name: c c_x_check; Type: CONSTRAINT; Schema: public; Owner: postgres
-- Data Pos: 0
--

ALTER TABLE public.c
    ADD CONSTRAINT c_x_check CHECK ((x > 0)) NOT VALID;


--
-- TOC entry 3220 (class 1259 OID 16407)
-- Dependencies: 3217
-- Name: p1_k_idx; Type: INDEX; Schema: public; Owner: postgres
-- Data Pos: 0
--

CREATE INDEX p1_k_idx ON public.p1 USING btree (k);


-- Completed on 2026-12-03 16:55:02 UTC

\unrestrict JK1P2UQsSs3qIVQBpb4fgCR5fFWoziz9pGpXzQmJMbpYq8g4m8ufzBkYnyJHbnv
"#;

    #[test]
    fn only_indexes_and_keys_of_copied_tables_are_split_off_with_their_settings() {
        let tables: HashSet<TableKey> = [("public", "We ird"), ("public", "p1"), ("public", "c")].iter().map(|(s, n)| (s.to_string(), n.to_string())).collect();
        let entries = table_entries(PLAIN, &tables);
        let weird = &entries[&("public".to_string(), "We ird".to_string())];
        assert_eq!(weird.iter().map(|e| e.id).collect::<Vec<_>>(), [3213, 3211]);
        assert_eq!(weird[0].sql, "SET default_tablespace = '';\nALTER TABLE ONLY public.\"We ird\"\n    ADD CONSTRAINT \"We ird_b_key\" UNIQUE (b);");
        assert!(weird[1].sql.starts_with("SET default_tablespace = fast;\nCREATE INDEX \"We ird_a_idx\""), "{}", weird[1].sql);
        assert!(weird[1].sql.ends_with("SET STATISTICS 500;"), "the whole entry: {}", weird[1].sql);
        assert_eq!(entries[&("public".to_string(), "p1".to_string())].iter().map(|e| e.id).collect::<Vec<_>>(), [3220]);
        // The partitioned parent's key and index (not copied: no rows), the comment, the
        // foreign key and the check constraint are left to pg_restore.
        assert!(!entries.contains_key(&("public".to_string(), "p".to_string())));
        assert!(!entries.contains_key(&("public".to_string(), "c".to_string())), "{entries:#?}");
        assert_eq!(entries.values().map(Vec::len).sum::<usize>(), 3);
    }
}
