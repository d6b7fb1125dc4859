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

use pg_query::protobuf::{node::Node as N, AlterTableType, ConstrType, ObjectType, RangeVar};

use crate::sql_text::quote_ident;

/// One archive entry that builds an index or key of one table, in two steps.
#[derive(Clone, Debug, PartialEq)]
pub struct TableEntry {
    /// Its TOC id (`pg_restore --list`'s first column): left out of the restore after the copy.
    pub id: u32,
    /// The session settings pg_restore had set for it, then what builds the index: a
    /// `CREATE INDEX`; for a primary key or unique constraint, its index as a `CREATE UNIQUE
    /// INDEX` of the constraint's name (an exclusion constraint: the whole `ADD CONSTRAINT`).
    /// The builds of one table run at once: each takes a SHARE lock, which the others allow.
    pub build: String,
    /// What waits until every build of the table is done, as it locks the table against
    /// them: a key's `ADD CONSTRAINT … USING INDEX` (which only records the built index as
    /// the constraint), `CLUSTER ON`, `REPLICA IDENTITY`, `SET STATISTICS`. Empty: nothing.
    pub finish: String,
    /// The settings and the entry as pg_restore would run it: for a small table, whose
    /// indexes are built one after the other.
    pub whole: String,
}

/// `(schema, name)` of a table.
pub type TableKey = (String, String);

/// An archive entry that adds one foreign key between two copied tables.
#[derive(Clone, Debug, PartialEq)]
pub struct ForeignKey {
    pub id: u32,
    /// The table it is on, and the table it references (the same for a self-reference).
    pub table: TableKey,
    pub references: TableKey,
    pub name: String,
    /// The settings and the entry as pg_restore would run it.
    pub sql: String,
}

/// What the per-table pipeline can run of the post-data archive.
#[derive(Debug, Default)]
pub struct TableEntries {
    /// The entries that build each table's indexes and keys, in archive order.
    pub by_table: BTreeMap<TableKey, Vec<TableEntry>>,
    /// Foreign keys whose two tables are both copied.
    pub foreign_keys: Vec<ForeignKey>,
}

/// The entries of `plain` (the post-data archive as `pg_restore --verbose --file -` writes
/// it) that build the indexes and keys of the tables in `tables`, and the foreign keys
/// between them.
pub fn table_entries(plain: &str, tables: &HashSet<TableKey>) -> TableEntries {
    let mut by_table: BTreeMap<TableKey, Vec<TableEntry>> = BTreeMap::new();
    let mut foreign_keys = Vec::new();
    let mut settings: BTreeMap<&str, &str> = BTreeMap::new();
    let mut entry: Option<(u32, u32, Vec<&str>)> = None;
    let mut in_header = false;
    let mut finish = |entry: &mut Option<(u32, u32, Vec<&str>)>, settings: &BTreeMap<&str, &str>| {
        if let Some((id, class, body)) = entry.take() {
            let sql = body.join("\n");
            if let Some((table, build, finish)) = split_entry(class, &sql, tables) {
                let prefix: String = settings.values().map(|s| format!("{s}\n")).collect();
                by_table.entry(table).or_default().push(TableEntry { id, build: format!("{prefix}{build}"), finish, whole: format!("{prefix}{}", sql.trim()) });
            } else if let Some((table, references, name)) = foreign_key(class, &sql, tables) {
                let prefix: String = settings.values().map(|s| format!("{s}\n")).collect();
                foreign_keys.push(ForeignKey { id, table, references, name, sql: format!("{prefix}{}", sql.trim()) });
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
    TableEntries { by_table, foreign_keys }
}

/// The tables and name of the foreign key an archive entry of class `class` adds, when it
/// does only that, between two tables of `tables`.
fn foreign_key(class: u32, sql: &str, tables: &HashSet<TableKey>) -> Option<(TableKey, TableKey, String)> {
    const PG_CONSTRAINT: u32 = 2606;
    if class != PG_CONSTRAINT {
        return None;
    }
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).ok()?;
    let [raw] = parsed.protobuf.stmts.as_slice() else { return None };
    let Some(N::AlterTableStmt(alter)) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else { return None };
    let ([cmd], Some(relation)) = (alter.cmds.as_slice(), alter.relation.as_ref()) else { return None };
    let Some(N::AlterTableCmd(cmd)) = cmd.node.as_ref() else { return None };
    let Some(N::Constraint(key)) = cmd.def.as_ref().and_then(|d| d.node.as_ref()) else { return None };
    if alter.objtype != ObjectType::ObjectTable as i32 || cmd.subtype != AlterTableType::AtAddConstraint as i32 || key.contype != ConstrType::ConstrForeign as i32 {
        return None;
    }
    let references = key.pktable.as_ref()?;
    let table = (relation.schemaname.clone(), relation.relname.clone());
    let references = (references.schemaname.clone(), references.relname.clone());
    (tables.contains(&table) && tables.contains(&references)).then(|| (table, references, key.conname.clone()))
}

/// The table an archive entry of catalog class `class` builds an index or key on, when it
/// does only that, on a table in `tables`; with the entry split into its build and its finish
/// (see `TableEntry`).
fn split_entry(class: u32, sql: &str, tables: &HashSet<TableKey>) -> Option<(TableKey, String, String)> {
    const PG_CLASS: u32 = 1259; // an INDEX entry
    const PG_CONSTRAINT: u32 = 2606; // a CONSTRAINT (or FK CONSTRAINT) entry
    if class != PG_CLASS && class != PG_CONSTRAINT {
        return None;
    }
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).ok()?;
    let mut table: Option<TableKey> = None;
    let mut same_table = |relation: &Option<RangeVar>| -> bool {
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
    let (mut build, mut finish) = (Vec::new(), Vec::new());
    for raw in &parsed.protobuf.stmts {
        // The statement as pg_dump wrote it (a length of 0: to the end).
        let start = usize::try_from(raw.stmt_location).ok()?;
        let text = match usize::try_from(raw.stmt_len).ok()? {
            0 => sql.get(start..)?,
            len => sql.get(start..start + len)?,
        };
        let text = format!("{};", text.trim());
        match raw.stmt.as_ref().and_then(|s| s.node.as_ref())? {
            // Not `ON ONLY` (a partitioned parent's, attached to later).
            N::IndexStmt(index) if index.relation.as_ref().is_some_and(|r| r.inh) && same_table(&index.relation) => build.push(text),
            N::AlterTableStmt(alter) if alter.objtype == ObjectType::ObjectTable as i32 && same_table(&alter.relation) => {
                let mut constraints = Vec::new();
                for cmd in &alter.cmds {
                    let Some(N::AlterTableCmd(cmd)) = cmd.node.as_ref() else { return None };
                    match AlterTableType::try_from(cmd.subtype) {
                        Ok(AlterTableType::AtAddConstraint) => match cmd.def.as_ref().and_then(|d| d.node.as_ref()) {
                            Some(N::Constraint(c)) if [ConstrType::ConstrPrimary as i32, ConstrType::ConstrUnique as i32, ConstrType::ConstrExclusion as i32].contains(&c.contype) => {
                                constraints.push(c)
                            }
                            _ => return None,
                        },
                        Ok(AlterTableType::AtClusterOn | AlterTableType::AtReplicaIdentity) => {}
                        _ => return None,
                    }
                }
                match (constraints.as_slice(), alter.cmds.len()) {
                    ([], _) => finish.push(text),
                    ([key], 1) if key.contype != ConstrType::ConstrExclusion as i32 => {
                        let relation = alter.relation.as_ref()?;
                        let (index, attach) = key_in_two_steps(relation, key)?;
                        build.push(index);
                        finish.push(attach);
                    }
                    // An exclusion constraint builds its index itself.
                    _ => build.push(text),
                }
            }
            // An index entry's `ALTER INDEX … ALTER COLUMN n SET STATISTICS`.
            N::AlterTableStmt(alter)
                if alter.objtype == ObjectType::ObjectIndex as i32
                    && alter.cmds.iter().all(|cmd| matches!(cmd.node.as_ref(), Some(N::AlterTableCmd(cmd)) if cmd.subtype == AlterTableType::AtSetStatistics as i32)) =>
            {
                finish.push(text)
            }
            _ => return None,
        }
    }
    if build.is_empty() {
        return None;
    }
    table.filter(|t| tables.contains(t)).map(|t| (t, build.join("\n"), finish.join("\n")))
}

/// A primary key or unique constraint as pgcopydb builds it: `CREATE UNIQUE INDEX` of the
/// constraint's name, with its columns, INCLUDE, storage parameters and NULLS NOT DISTINCT
/// (its tablespace is pg_restore's `default_tablespace`, set before), then `ALTER TABLE …
/// ADD CONSTRAINT … USING INDEX` with its deferrability. The catalog ends the same as one
/// `ADD CONSTRAINT` would leave it; the index builds alongside the table's others instead
/// of under an exclusive lock. `None` for a shape this does not know (left whole).
fn key_in_two_steps(relation: &RangeVar, key: &pg_query::protobuf::Constraint) -> Option<(String, String)> {
    use pg_query::protobuf::{IndexElem, IndexStmt, SortByDir, SortByNulls};
    if key.conname.is_empty() || key.keys.is_empty() || !key.indexname.is_empty() || !key.indexspace.is_empty() || key.where_clause.is_some() {
        return None;
    }
    let column = |n: &pg_query::protobuf::Node| match n.node.as_ref() {
        Some(N::String(s)) => Some(pg_query::protobuf::Node { node: Some(N::IndexElem(Box::new(IndexElem {
            name: s.sval.clone(),
            // Protobuf's 0 is no value: the C side would abort on it.
            ordering: SortByDir::SortbyDefault as i32,
            nulls_ordering: SortByNulls::SortbyNullsDefault as i32,
            ..Default::default()
        }))) }),
        _ => None,
    };
    let index = IndexStmt {
        idxname: key.conname.clone(),
        // Not `ON ONLY`, which is for partitioned parents (`ALTER TABLE ONLY` is no hint).
        relation: Some(RangeVar { inh: true, ..relation.clone() }),
        access_method: "btree".into(),
        index_params: key.keys.iter().map(column).collect::<Option<_>>()?,
        index_including_params: key.including.iter().map(column).collect::<Option<_>>()?,
        options: key.options.clone(),
        unique: true,
        nulls_not_distinct: key.nulls_not_distinct,
        ..Default::default()
    };
    let index = N::IndexStmt(Box::new(index)).deparse(pg_query::DeparseOptions::default()).ok()?;
    let kind = if key.contype == ConstrType::ConstrPrimary as i32 { "PRIMARY KEY" } else { "UNIQUE" };
    let deferrable = match (key.deferrable, key.initdeferred) {
        (false, _) => "",
        (true, false) => " DEFERRABLE",
        (true, true) => " DEFERRABLE INITIALLY DEFERRED",
    };
    let table = if relation.schemaname.is_empty() { quote_ident(&relation.relname) } else { format!("{}.{}", quote_ident(&relation.schemaname), quote_ident(&relation.relname)) };
    let name = quote_ident(&key.conname);
    let only = if relation.inh { "" } else { "ONLY " };
    Some((format!("{index};"), format!("ALTER TABLE {only}{table} ADD CONSTRAINT {name} {kind} USING INDEX {name}{deferrable};")))
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
        let TableEntries { by_table: entries, foreign_keys } = table_entries(PLAIN, &tables);
        let weird = &entries[&("public".to_string(), "We ird".to_string())];
        assert_eq!(weird.iter().map(|e| e.id).collect::<Vec<_>>(), [3213, 3211]);
        // A unique constraint: its index built alongside the others, attached after.
        assert_eq!(weird[0].build, "SET default_tablespace = '';\nCREATE UNIQUE INDEX \"We ird_b_key\" ON public.\"We ird\" USING btree (b);");
        assert_eq!(weird[0].finish, "ALTER TABLE ONLY \"public\".\"We ird\" ADD CONSTRAINT \"We ird_b_key\" UNIQUE USING INDEX \"We ird_b_key\";");
        assert_eq!(weird[1].build, "SET default_tablespace = fast;\nCREATE INDEX \"We ird_a_idx\" ON public.\"We ird\" USING btree (a);");
        assert_eq!(weird[1].finish, "ALTER INDEX public.\"We ird_a_idx\" ALTER COLUMN 1 SET STATISTICS 500;");
        assert_eq!(weird[0].whole, "SET default_tablespace = '';\nALTER TABLE ONLY public.\"We ird\"\n    ADD CONSTRAINT \"We ird_b_key\" UNIQUE (b);");
        assert!(weird[1].whole.starts_with("SET default_tablespace = fast;\nCREATE INDEX \"We ird_a_idx\"") && weird[1].whole.ends_with("SET STATISTICS 500;"), "{}", weird[1].whole);
        assert_eq!(entries[&("public".to_string(), "p1".to_string())].iter().map(|e| e.id).collect::<Vec<_>>(), [3220]);
        // The foreign key between two copied tables, for after both are done.
        assert_eq!(foreign_keys.len(), 1);
        let fk = &foreign_keys[0];
        assert_eq!((fk.id, fk.name.as_str()), (3226, "c_id_fkey"));
        assert_eq!((fk.table.1.as_str(), fk.references.1.as_str()), ("c", "We ird"));
        assert!(fk.sql.ends_with("ADD CONSTRAINT c_id_fkey FOREIGN KEY (id) REFERENCES public.\"We ird\"(id);"), "{}", fk.sql);
        // The partitioned parent's key and index (not copied: no rows), the comment and the
        // check constraint are left to pg_restore.
        assert!(!entries.contains_key(&("public".to_string(), "p".to_string())));
        assert!(!entries.contains_key(&("public".to_string(), "c".to_string())), "{entries:#?}");
        assert_eq!(entries.values().map(Vec::len).sum::<usize>(), 3);
    }

    fn only_entry(sql: &str) -> (String, String) {
        let tables: HashSet<TableKey> = [("s".to_string(), "t".to_string())].into();
        let (table, build, finish) = split_entry(2606, sql, &tables).expect("an entry of s.t");
        assert_eq!(table, ("s".to_string(), "t".to_string()));
        (build, finish)
    }

    #[test]
    fn keys_are_built_as_unique_indexes_and_attached_with_every_option() {
        let (build, finish) = only_entry(
            "ALTER TABLE ONLY s.t\n    ADD CONSTRAINT \"T pk\" PRIMARY KEY (a, \"B b\") INCLUDE (c) WITH (fillfactor='70', deduplicate_items=off) DEFERRABLE INITIALLY DEFERRED;\n\nALTER TABLE s.t CLUSTER ON \"T pk\";",
        );
        assert_eq!(build, "CREATE UNIQUE INDEX \"T pk\" ON s.t USING btree (a, \"B b\") INCLUDE (c) WITH (fillfactor='70', deduplicate_items=off);");
        assert_eq!(finish, "ALTER TABLE ONLY \"s\".\"t\" ADD CONSTRAINT \"T pk\" PRIMARY KEY USING INDEX \"T pk\" DEFERRABLE INITIALLY DEFERRED;\nALTER TABLE s.t CLUSTER ON \"T pk\";");
        let (build, finish) = only_entry("ALTER TABLE ONLY \"s\".\"t\" ADD CONSTRAINT u UNIQUE NULLS NOT DISTINCT (a) DEFERRABLE;");
        assert_eq!(build, "CREATE UNIQUE INDEX u ON s.t USING btree (a) NULLS NOT DISTINCT;");
        assert_eq!(finish, "ALTER TABLE ONLY \"s\".\"t\" ADD CONSTRAINT \"u\" UNIQUE USING INDEX \"u\" DEFERRABLE;");
        // An exclusion constraint builds its own index: whole, as a build.
        let exclusion = "ALTER TABLE ONLY \"s\".\"t\" ADD CONSTRAINT x EXCLUDE USING gist (r WITH &&);";
        assert_eq!(only_entry(exclusion), (exclusion.to_string(), String::new()));
        let (build, finish) = only_entry("ALTER TABLE ONLY \"s\".\"t\" ADD CONSTRAINT p PRIMARY KEY (a);\n\nALTER TABLE ONLY s.t REPLICA IDENTITY USING INDEX p;");
        assert_eq!(build, "CREATE UNIQUE INDEX p ON s.t USING btree (a);");
        assert_eq!(finish, "ALTER TABLE ONLY \"s\".\"t\" ADD CONSTRAINT \"p\" PRIMARY KEY USING INDEX \"p\";\nALTER TABLE ONLY s.t REPLICA IDENTITY USING INDEX p;");
    }
}
