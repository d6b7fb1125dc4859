"""Native tests of the table-owners example (run from this directory with
`PYTHONPATH=../../sdk/python python3 -m unittest discover -s tests`)."""

import unittest

from pgferry_sdk import testing
from pgferry_sdk import MigrationMode, Severity
from componentize_py_types import Err

import app


def with_tables(*owned):
    """A fixture whose database `app` has tables (name, owner)."""
    fx = testing.Fixture()
    db = fx.source_database("app")
    for name, owner in owned:
        t = testing.table("public", name)
        t.owner = owner
        db.tables.append(t)
    return fx


def check(fx, owners):
    if owners is not None:
        fx.settings["owners"] = owners
    return fx.check(app.Rules, "table-owners", fx.context(MigrationMode.OFFLINE, database="app"))


class TableOwnersTest(unittest.TestCase):
    def test_the_owners_setting_is_required(self):
        for owners in (None, " , "):
            with self.assertRaises(Err) as e:
                check(with_tables(("orders", "postgres")), owners)
            self.assertIn("setting `owners` is required", e.exception.value)

    def test_flags_tables_of_other_owners_with_the_fix(self):
        findings = check(with_tables(("orders", "app_owner"), ("Audit Log", "bob")), "app_owner")
        self.assertEqual(len(findings), 1, findings)
        f = testing.assert_fires(findings, "table-owner-not-allowed", Severity.ERROR, "public.Audit Log")
        self.assertIn("owned by `bob`", f.message)
        self.assertIn('ALTER TABLE public."Audit Log" OWNER TO app_owner;', f.remediation)

    def test_several_owners_are_allowed(self):
        fx = with_tables(("orders", "app_owner"), ("staging", "etl"))
        self.assertEqual(check(fx, "app_owner, etl"), [])
        self.assertEqual([f.object for f in check(fx, "app_owner")], ["public.staging"])

    def test_an_unknown_database_is_skipped_with_a_log_line(self):
        fx = testing.Fixture()
        fx.settings["owners"] = "postgres"
        self.assertEqual(fx.check(app.Rules, "table-owners", fx.context(database="nope")), [])
        self.assertIn("`nope` is not in the source inventory", fx.logs[0][1])


if __name__ == "__main__":
    unittest.main()
