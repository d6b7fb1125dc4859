"""An example of a platform team's own validation rule, in Python: every table of a migrated
database is owned by one of the roles the team allows ("every table has an owner from our
list").

Setting `owners` (plugin configuration, required): the allowed roles, comma-separated.
Finding `table-owner-not-allowed` (error): a table owned by another role; the remediation
gives the ALTER TABLE that fixes it.
"""

from pgferry_sdk import Level, LogLevel, Rule, error, manifest, quote_ident, rule_set, text


class TableOwners(Rule):
    id = "table-owners"
    title = "Every table is owned by an allowed role"
    level = Level.DATABASE

    def check(self, cx):
        allowed = [o.strip() for o in (cx.setting("owners") or "").split(",") if o.strip()]
        if not allowed:
            raise ValueError('setting `owners` is required: the allowed table owners, comma-separated, e.g. owners = "app_owner,etl"')
        db = cx.source_database()
        if db is None:
            cx.log(LogLevel.WARN, f"database `{cx.database_name}` is not in the source inventory; skipped")
            return []
        findings = []
        for t in db.tables:
            if t.owner in allowed:
                continue
            name = f"{t.schema}.{t.name}"
            findings.append(error(
                "table-owner-not-allowed",
                f"table `{name}` in database `{db.name}` is owned by `{t.owner}`, which is not one of `owners` ({', '.join(allowed)})",
                on=name,
                fix=f"On the source, run `ALTER TABLE {quote_ident(t.schema)}.{quote_ident(t.name)} OWNER TO {quote_ident(allowed[0])};`, "
                f"or add `{t.owner}` to this plugin's `owners` setting.",
            ))
        return findings


Rules = rule_set(
    TableOwners,
    manifest=manifest(
        "example-table-owners",
        "0.1.0",
        "Every table is owned by an allowed role",
        settings=[text("owners", "The allowed table owners, comma-separated", required=True)],
    ),
)
