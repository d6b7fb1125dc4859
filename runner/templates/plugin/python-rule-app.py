"""{{name}}: a pgferry validation rule, built into a component with componentize-py.

Rule `{{name}}` (database level): no source table whose name starts with a prefix (a
leftover of an import or a test) is migrated.
Setting `prefix` (plugin configuration): the prefix; `tmp_` when not set.
Finding `leftover-table` (error): the table, with what to do about it.

Change the rule to what your platform needs; README.md says how to test, build and pin it.
"""

from pgferry_sdk import Level, LogLevel, Rule, error, manifest, rule_set, text

DEFAULT_PREFIX = "tmp_"


class LeftoverTables(Rule):
    id = "{{name}}"
    title = "No leftover tables are migrated"
    level = Level.DATABASE

    def check(self, cx):
        prefix = cx.setting("prefix", DEFAULT_PREFIX)
        if not prefix:
            raise ValueError('setting `prefix` is empty: give a table name prefix, e.g. "tmp_"')
        db = cx.source_database()
        if db is None:
            cx.log(LogLevel.WARN, f"database `{cx.database_name}` is not in the source inventory; skipped")
            return []
        findings = []
        for t in db.tables:
            if t.name.startswith(prefix):
                name = f"{t.schema}.{t.name}"
                findings.append(error(
                    "leftover-table",
                    f"table `{name}` in database `{db.name}` starts with `{prefix}`",
                    on=name,
                    fix=f"Drop `{name}` on the source if it is a leftover, or rename it; then validate again.",
                ))
        return findings


# The component's export: componentize-py looks for `Rules` in this module. The manifest
# declares the settings the runner accepts for this plugin (an unknown or mistyped key in
# plugins.toml is refused at load, naming the plugin and the key).
Rules = rule_set(
    LeftoverTables,
    manifest=manifest(
        "{{name}}",
        "0.1.0",
        "No leftover tables are migrated",
        settings=[text("prefix", "Tables whose name starts with this are reported", default=DEFAULT_PREFIX)],
    ),
)
