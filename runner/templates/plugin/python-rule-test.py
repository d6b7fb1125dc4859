"""Native tests of {{name}}: the rule runs in CPython against an inventory fixture.
Run them from the project directory with `python3 -m unittest discover -s tests`."""

import unittest

from pgferry_sdk import testing  # before the plugin: outside a component it provides wit_world
from pgferry_sdk import Level, MigrationMode, Severity
from componentize_py_types import Err

import app


def with_tables(*names):
    fx = testing.Fixture()
    fx.source_database("app").tables.extend(testing.table("public", n) for n in names)
    return fx


def check(fx):
    return fx.check(app.Rules, "{{name}}", fx.context(MigrationMode.OFFLINE, database="app"))


class LeftoverTablesTest(unittest.TestCase):
    def test_describes_a_database_rule(self):
        [d] = app.Rules().describe()
        self.assertEqual(d.id, "{{name}}")
        self.assertEqual(d.level, Level.DATABASE)

    def test_flags_tables_with_the_prefix_only(self):
        findings = check(with_tables("orders", "tmp_import"))
        self.assertEqual(len(findings), 1, findings)
        f = testing.assert_fires(findings, "leftover-table", Severity.ERROR, "public.tmp_import")
        self.assertIn("`tmp_`", f.message)
        self.assertEqual(check(with_tables("orders")), [])

    def test_the_prefix_is_a_setting(self):
        fx = with_tables("tmp_import", "old_orders")
        fx.settings["prefix"] = "old_"
        findings = check(fx)
        testing.assert_fires(findings, "leftover-table", Severity.ERROR, "public.old_orders")
        self.assertEqual(len(findings), 1, findings)
        fx.settings["prefix"] = ""
        with self.assertRaises(Err) as e:
            check(fx)
        self.assertIn("prefix", e.exception.value)

    def test_unknown_rule_is_an_error(self):
        fx = testing.Fixture()
        with self.assertRaises(Err):
            fx.check(app.Rules, "no-such-rule", fx.context(database="app"))


if __name__ == "__main__":
    unittest.main()
