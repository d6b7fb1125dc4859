"""Native tests of a Python plugin, in CPython, without building a component.

Importing ``pgferry_sdk`` outside a component makes the ``wit_world`` bindings importable
(``_bindings`` generates them into ``.bindings/`` of the project when they are not there
yet); a :class:`Fixture` answers the plugin's host calls::

    from pgferry_sdk import testing
    from pgferry_sdk import MigrationMode, Severity
    import app

    fx = testing.Fixture()                    # or testing.Fixture.load("dump.json")
    fx.source_database("app").tables.append(testing.table("public", "tmp_import"))
    findings = fx.check(app.Rules, "my-rule", fx.context(database="app"))
    testing.assert_fires(findings, "leftover-table", Severity.ERROR, "public.tmp_import")

A fixture is the JSON that ``pgferry inventory dump`` writes (and the Rust SDK's
``testing::Fixture`` serialises to); the default one, ``fixture.json`` beside this file, is
the Rust SDK's ``Fixture::new()``: PostgreSQL 15 on both sides, one source database ``app``.
"""

import copy
import dataclasses
import enum
import json
import re
import typing
from pathlib import Path

from componentize_py_types import Err
from wit_world.imports import host, types

from . import Finding, MigrationMode, Severity, Side


def _enum_member(cls, name: str):
    # serde writes Rust's variant names (`PartitionedTable`); Python's are `PARTITIONED_TABLE`.
    return cls[re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()]


def _convert(hint, value):
    """JSON (as serde writes the SDK's types) to the generated dataclasses."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:  # Optional[T]
        if value is None:
            return None
        return _convert(next(a for a in args if a is not type(None)), value)
    if origin in (list, typing.List):
        return [_convert(args[0], v) for v in value]
    if origin in (tuple, typing.Tuple):
        return tuple(_convert(a, v) for a, v in zip(args, value))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum_member(hint, value)
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{f.name: _convert(hints[f.name], value[f.name]) for f in dataclasses.fields(hint)})
    return value


class Fixture:
    """The inventory and settings a native test runs a plugin against."""

    def __init__(self, doc: typing.Optional[dict] = None):
        if doc is None:
            doc = json.loads((Path(__file__).parent / "fixture.json").read_text())
        self.source: types.ServerInfo = _convert(types.ServerInfo, doc["source"])
        self.target: types.ServerInfo = _convert(types.ServerInfo, doc["target"])
        self.source_databases: typing.List[types.DatabaseInfo] = _convert(typing.List[types.DatabaseInfo], doc.get("source_databases", []))
        self.target_databases: typing.List[types.DatabaseInfo] = _convert(typing.List[types.DatabaseInfo], doc.get("target_databases", []))
        self.settings: typing.Dict[str, str] = dict(doc.get("settings", []))
        self.logs: typing.List[typing.Tuple[host.LogLevel, str]] = []

    @classmethod
    def load(cls, path) -> "Fixture":
        """A fixture from a file, e.g. the output of `pgferry inventory dump`."""
        return cls(json.loads(Path(path).read_text()))

    def source_database(self, name: str) -> types.DatabaseInfo:
        """The source database `name`, added (empty, with its summary) when missing."""
        db = next((d for d in self.source_databases if d.name == name), None)
        if db is None:
            # As the Rust SDK's testing::database and database_summary make one.
            db = types.DatabaseInfo(
                name=name, schemas=[types.SchemaInfo(name="public", owner="pg_database_owner")],
                extensions=[types.ExtensionInfo(name="plpgsql", version="1.0", schema="pg_catalog")], tables=[],
                collations_used=[], languages=[types.LanguageInfo(name="plpgsql", trusted=True, owner="postgres")],
                user_casts=[], large_object_count=0, owners=[],
            )
            self.source_databases.append(db)
            self.source.databases.append(types.DatabaseSummary(
                name=name, owner="postgres", encoding="UTF8", collate="C.UTF-8", ctype="C.UTF-8", locale_provider="libc",
                icu_locale=None, size_bytes=8 << 20, is_template=False, allow_connections=True,
            ))
        return db

    def context(self, mode: MigrationMode = MigrationMode.OFFLINE, database: typing.Optional[str] = None, source_type: str = "OnPremises") -> types.CheckContext:
        """The check context of a migration of every source database in `mode`; `database`
        is set for database-level rules."""
        return types.CheckContext(
            migration_name="test",
            mode=mode,
            migration_option=types.MigrationOption.VALIDATE,
            source_type=source_type,
            database=database,
            dbs_to_migrate=[d.name for d in self.source_databases],
            overwrite_dbs_in_target=False,
        )

    def install(self) -> None:
        """Answers the plugin's host calls from this fixture (until another is installed)."""
        host.server = lambda side: copy.deepcopy(self.source if side == Side.SOURCE else self.target)
        host.database = lambda side, name: copy.deepcopy(next((d for d in (self.source_databases if side == Side.SOURCE else self.target_databases) if d.name == name), None))
        host.settings = lambda: list(self.settings.items())
        host.log = lambda level, message: self.logs.append((level, message))

        def query(side, database, sql):
            raise Err(f"the fixture has no answer for `{sql}`")

        host.query = query

    def check(self, rules_export, rule_id: str, ctx: types.CheckContext) -> typing.List[Finding]:
        """Runs one rule of a `Rules` export against this fixture, as the runner would.
        Raises `componentize_py_types.Err` when the rule reports that it could not run."""
        self.install()
        return rules_export().check(rule_id, ctx)

    def readiness(self, adapter_export, ctx: types.CheckContext) -> typing.List[Finding]:
        """Runs an `Adapter` export's readiness check against this fixture."""
        self.install()
        return adapter_export().readiness(ctx)


def table(schema: str, name: str) -> types.TableInfo:
    """A plain table with a primary key and one `id integer` column."""
    return types.TableInfo(
        schema=schema, name=name, owner="postgres", kind=types.RelationKind.TABLE, unlogged=False, has_oids=False,
        has_primary_key=True, replica_identity=types.ReplicaIdentity.DEFAULT, replica_identity_index=None,
        has_unique_not_null_index=True, partition_of=None, row_estimate=0, size_bytes=8192,
        columns=[types.ColumnInfo(name="id", type_name="integer", generated="", identity=False, collation=None)],
    )


def assert_fires(findings: typing.List[Finding], code: str, severity: Severity, on: str) -> Finding:
    """The first finding with this code, severity and object and a remediation; fails the
    test (AssertionError) when there is none."""
    for f in findings:
        if f.code == code and f.severity == severity and f.object == on and f.remediation:
            return f
    raise AssertionError(f"expected {severity.name} `{code}` on `{on}` with a remediation in {findings}")


def assert_absent(findings: typing.List[Finding], code: str) -> None:
    if any(f.code == code for f in findings):
        raise AssertionError(f"unexpected `{code}` in {findings}")
