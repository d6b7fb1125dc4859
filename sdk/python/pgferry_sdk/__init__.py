"""The pgferry plugin SDK for Python guests (componentize-py).

A validation rule is a class with ``id``, ``title``, ``level`` and a ``check(cx)`` method;
``rule_set(...)`` turns rule classes into the ``Rules`` export the component needs::

    from pgferry_sdk import Rule, rule_set, error, Level

    class NoHugeDatabases(Rule):
        id = "no-huge-databases"
        title = "Databases stay under the size limit"
        level = Level.DATABASE

        def check(self, cx):
            db = cx.source_database_summary()
            if db and db.size_bytes > 1 << 40:
                return [error("database-too-big", "over 1 TiB", on=db.name, fix="Ask the platform team.")]
            return []

    Rules = rule_set(NoHugeDatabases, manifest=manifest("no-huge-databases", "1.0.0", "Databases stay small"))

``manifest(...)`` says what the plugin is and which settings it takes (``text``,
``boolean``, ``integer``, ``number``, each with a default or required): the runner checks the
operator's configuration against it when it loads the plugin (contract 0.2.0).

A source adapter implements the world's ``Adapter`` protocol directly and uses the finding
helpers here. ``pgferry_sdk.testing`` runs either natively against an inventory fixture.

The types are those componentize-py generates from the WIT contract (``wit_world``): inside
a component they are the real bindings, in native tests ``pgferry_sdk.testing`` generates
the same bindings and answers the host calls from a fixture.
"""

import re
from typing import Dict, List, Optional

try:
    import componentize_py_types  # noqa: F401  (present inside a component)
except ImportError:
    from . import _bindings

    _bindings.ensure()

from componentize_py_types import Err
from wit_world.imports import host, manifest as _manifest, types
from wit_world.imports.types import (  # noqa: F401  (re-exported for plugin authors)
    CheckContext,
    DatabaseInfo,
    DatabaseSummary,
    Finding,
    Level,
    MigrationMode,
    ServerInfo,
    Severity,
    Side,
    TableInfo,
)

LogLevel = host.LogLevel
PluginManifest = _manifest.PluginManifest
SettingSpec = _manifest.SettingSpec
Grant = _manifest.Grant


def _setting(kind: "_manifest.SettingType", name: str, description: str, default, required: bool) -> SettingSpec:
    if required and default is not None:
        raise ValueError(f"setting `{name}`: a required setting has no default")
    if default is not None:
        default = ("true" if default else "false") if isinstance(default, bool) else str(default)
    return SettingSpec(name=name, description=description, value_type=kind, default=default, required=required)


def text(name: str, description: str, *, default: Optional[str] = None, required: bool = False) -> SettingSpec:
    """A text setting for ``manifest(settings=[...])``."""
    return _setting(_manifest.SettingType.TEXT, name, description, default, required)


def boolean(name: str, description: str, *, default: Optional[bool] = None, required: bool = False) -> SettingSpec:
    return _setting(_manifest.SettingType.BOOLEAN, name, description, default, required)


def integer(name: str, description: str, *, default: Optional[int] = None, required: bool = False) -> SettingSpec:
    return _setting(_manifest.SettingType.INTEGER, name, description, default, required)


def number(name: str, description: str, *, default: Optional[float] = None, required: bool = False) -> SettingSpec:
    return _setting(_manifest.SettingType.NUMBER, name, description, default, required)


def manifest(
    id: str,
    version: str,
    description: str,
    *,
    settings: Optional[List[SettingSpec]] = None,
    grants: Optional[List[Grant]] = None,
    inventory_settings: Optional[List[str]] = None,
) -> PluginManifest:
    """What the plugin says about itself (contract 0.2.0): its id, version (semver) and
    description, the settings it takes, the grants it needs (``Grant.SQL``) and the server
    settings it reads beyond every inventory's (an exact name, or ``prefix*``)."""
    return PluginManifest(
        id=id,
        version=version,
        description=description,
        settings=list(settings or []),
        grants=list(grants or []),
        inventory_settings=list(inventory_settings or []),
    )


def _finding(severity: Severity, code: str, message: str, on: Optional[str], fix: Optional[str]) -> Finding:
    return Finding(severity=severity, code=code, message=message, object=on, remediation=fix)


def error(code: str, message: str, *, on: Optional[str] = None, fix: Optional[str] = None) -> Finding:
    """A finding that fails validation. ``on`` names the object, ``fix`` says what to do."""
    return _finding(Severity.ERROR, code, message, on, fix)


def warning(code: str, message: str, *, on: Optional[str] = None, fix: Optional[str] = None) -> Finding:
    return _finding(Severity.WARNING, code, message, on, fix)


def info(code: str, message: str, *, on: Optional[str] = None, fix: Optional[str] = None) -> Finding:
    return _finding(Severity.INFO, code, message, on, fix)


def setting_of(server: ServerInfo, name: str) -> Optional[str]:
    """The value of a server setting (pg_settings) in the inventory, or None."""
    return next((s.value for s in server.settings if s.name == name), None)


def quote_ident(name: str) -> str:
    """Quotes an identifier the way PostgreSQL's quote_ident() does (keywords aside)."""
    plain = bool(re.fullmatch(r"[a-z_][a-z0-9_$]*", name))
    return name if plain else '"' + name.replace('"', '""') + '"'


class Context:
    """What a check sees: the migration (``cx.check``), the inventory, the plugin's settings."""

    def __init__(self, check: CheckContext):
        self.check = check
        self._source: Optional[ServerInfo] = None
        self._target: Optional[ServerInfo] = None

    @property
    def mode(self) -> MigrationMode:
        return self.check.mode

    @property
    def database_name(self) -> str:
        """The database a database-level rule checks ('' for instance-level rules)."""
        return self.check.database or ""

    def source(self) -> ServerInfo:
        if self._source is None:
            self._source = host.server(Side.SOURCE)
        return self._source

    def target(self) -> ServerInfo:
        if self._target is None:
            self._target = host.server(Side.TARGET)
        return self._target

    def source_database_summary(self) -> Optional[DatabaseSummary]:
        """The instance inventory's entry (size, owner, encoding) of the checked database."""
        return next((d for d in self.source().databases if d.name == self.database_name), None)

    def source_database(self, name: Optional[str] = None) -> Optional[DatabaseInfo]:
        """The per-database inventory (schemas, tables, extensions) of a source database,
        by default the checked one."""
        return host.database(Side.SOURCE, name or self.database_name)

    def settings(self) -> Dict[str, str]:
        """The plugin's settings from the runner's plugin configuration."""
        return dict(host.settings())

    def setting(self, key: str, default: Optional[str] = None) -> Optional[str]:
        return self.settings().get(key, default)

    def log(self, level: "host.LogLevel", message: str) -> None:
        host.log(level, message)


class Rule:
    """Base of a validation rule: set ``id``, ``title``, ``level`` (and optionally ``modes``
    and ``source_types``, empty meaning all) and implement ``check(cx) -> list[Finding]``.
    Raise an exception when the rule itself cannot run: the runner shows it as an error
    naming the plugin."""

    id: str = ""
    title: str = ""
    level: Level = Level.DATABASE
    modes: List[MigrationMode] = []
    source_types: List[str] = []

    def describe(self):
        from wit_world.exports.rules import RuleDescriptor

        return RuleDescriptor(id=self.id, title=self.title, level=self.level, modes=list(self.modes), source_types=list(self.source_types))

    def check(self, cx: Context) -> List[Finding]:
        raise NotImplementedError(f"rule {self.id!r} has no check method")


def rule_set(*rule_classes, manifest: PluginManifest):
    """The component's ``Rules`` export for these rule classes:
    ``Rules = rule_set(A, B, manifest=manifest("my-rules", "1.0.0", "…"))``."""
    from wit_world.exports import Rules as RulesProtocol

    plugin_manifest = manifest

    rules = [cls() for cls in rule_classes]
    ids = [r.id for r in rules]
    if len(set(ids)) != len(ids) or not all(ids):
        raise ValueError(f"rule ids must be set and unique, got {ids}")

    class Rules(RulesProtocol):
        def manifest(self):
            return plugin_manifest

        def describe(self):
            return [r.describe() for r in rules]

        def check(self, rule_id: str, ctx: CheckContext) -> List[Finding]:
            rule = next((r for r in rules if r.id == rule_id), None)
            if rule is None:
                raise Err(f"this plugin has no rule `{rule_id}`")
            try:
                return list(rule.check(Context(ctx)))
            except Err:
                raise
            except Exception as e:  # the rule could not run: a result, not a trap
                raise Err(f"rule `{rule_id}` failed: {type(e).__name__}: {e}")

    return Rules
