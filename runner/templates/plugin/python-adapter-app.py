"""{{name}}: a pgferry source adapter, for `"sourceType": "{{ID}}"` in the properties,
built into a component with componentize-py.

Readiness findings (codes are stable):
- `wal-level-not-logical` (error, online migrations): `wal_level` is not `logical`.
- `replication-privilege-missing` (error, online migrations): the connecting role is neither
  a superuser nor has REPLICATION.

Change it to what your platform does; README.md says how to test, build and pin it.
"""

import wit_world
from wit_world.exports.adapter import AdapterInfo, ConnectionDetails, ProviderObjectNames
from wit_world.imports.types import SslMode

from pgferry_sdk import Context, MigrationMode, error, manifest, setting_of


class Adapter(wit_world.exports.Adapter):
    def manifest(self):
        # The provider's own settings this adapter reads go in inventory_settings (an exact
        # name, also a placeholder the server does not list, or `prefix*`).
        return manifest("{{name}}", "0.1.0", "Source adapter for {{ID}}", inventory_settings=[])

    def info(self) -> AdapterInfo:
        return AdapterInfo(
            ids=["{{ID}}"],
            display_name="{{name}}",
            # A managed service: encrypted connections only.
            allowed_ssl_modes=[SslMode.REQUIRE, SslMode.VERIFY_CA, SslMode.VERIFY_FULL],
            preferred_ssl_mode=SslMode.REQUIRE,
            owned_codes=[],
        )

    def normalize_connection(self, details: ConnectionDetails) -> ConnectionDetails:
        return details

    def provider_objects(self) -> ProviderObjectNames:
        # The provider's own objects: refused in DBsToMigrate, left out of the migration.
        return ProviderObjectNames(databases=["platform_admin"], roles=["platform_*"], schemas=[], extensions=[])

    def replication_roles(self):
        return []

    def readiness(self, ctx):
        if ctx.mode != MigrationMode.ONLINE:
            return []
        source = Context(ctx).source()
        findings = []
        level = setting_of(source, "wal_level")
        if level is not None and level != "logical":
            findings.append(error(
                "wal-level-not-logical",
                f"wal_level is `{level}`; an online migration needs `logical`",
                on="wal_level",
                fix="Set wal_level = logical in the platform's console and restart the server.",
            ))
        role = next((r for r in source.roles if r.name == source.current_user), None)
        if role is not None and not (role.superuser or role.replication):
            findings.append(error(
                "replication-privilege-missing",
                f"role `{role.name}` may not replicate",
                on=role.name,
                fix=f"As an admin, run `ALTER ROLE {role.name} WITH REPLICATION;`",
            ))
        return findings
