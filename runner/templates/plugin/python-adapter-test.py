"""Native tests of {{name}}: the adapter runs in CPython against an inventory fixture.
Run them from the project directory with `python3 -m unittest discover -s tests`."""

import unittest

from pgferry_sdk import testing  # before the plugin: outside a component it provides wit_world
from pgferry_sdk import MigrationMode, Severity
from wit_world.imports.types import SslMode

import app


class AdapterTest(unittest.TestCase):
    def test_info_is_consistent(self):
        info = app.Adapter().info()
        self.assertEqual(info.ids, ["{{ID}}"])
        self.assertIn(info.preferred_ssl_mode, info.allowed_ssl_modes)
        self.assertNotIn(SslMode.DISABLE, info.allowed_ssl_modes)
        self.assertEqual(app.Adapter().provider_objects().databases, ["platform_admin"])

    def test_online_needs_logical_replication(self):
        fx = testing.Fixture()
        online = fx.context(MigrationMode.ONLINE)
        testing.assert_fires(fx.readiness(app.Adapter, online), "wal-level-not-logical", Severity.ERROR, "wal_level")
        next(s for s in fx.source.settings if s.name == "wal_level").value = "logical"
        self.assertEqual(fx.readiness(app.Adapter, online), [])

    def test_offline_is_ready(self):
        fx = testing.Fixture()
        self.assertEqual(fx.readiness(app.Adapter, fx.context(MigrationMode.OFFLINE)), [])


if __name__ == "__main__":
    unittest.main()
