//! The built-in adapters' READMEs describe what the runner really loads: every adapter
//! plugin has plugins/<name>/README.md naming each source type id it declares and its
//! display name.

use pgferry_tests::{workspace_root, Pgferry};
use serde_json::Value;

#[test]
fn every_builtin_adapter_has_a_readme_naming_its_ids() {
    let out = Pgferry::new().run(&["plugin", "list", "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.transcript());
    let rows: Value = serde_json::from_str(&out.stdout).unwrap();
    let adapters: Vec<&Value> = rows.as_array().unwrap().iter().filter(|r| r["world"] == "source-adapter" && r["origin"]["kind"] != "file").collect();
    assert_eq!(adapters.len(), 5, "{}", out.stdout);
    for a in adapters {
        let name = a["name"].as_str().unwrap();
        let path = workspace_root().join("plugins").join(name).join("README.md");
        let readme = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(readme.starts_with(&format!("# {name}\n")), "{} starts with its name", path.display());
        for id in a["ids"].as_array().unwrap() {
            assert!(readme.contains(&format!("`{}`", id.as_str().unwrap())), "{} does not name id {id}", path.display());
        }
        assert!(readme.contains(a["displayName"].as_str().unwrap()), "{} does not give the display name {}", path.display(), a["displayName"]);
        for code in ["wal-level-not-logical", "replication-privilege-missing", "admin-privilege-missing"] {
            assert!(readme.contains(&format!("`{code}`")), "{} does not document `{code}`", path.display());
        }
    }
}
