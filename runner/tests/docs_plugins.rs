//! docs/plugins.md keeps up with the contract: every record and enum of the newest WIT has a
//! section in its reference, listing every field (or case) of it.

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// (kind, name, fields or cases) of every record and enum in a WIT file.
fn declarations(wit: &str) -> Vec<(&'static str, String, Vec<String>)> {
    let mut out = Vec::new();
    let mut lines = wit.lines().map(str::trim).filter(|l| !l.starts_with("///") && !l.is_empty());
    while let Some(line) = lines.next() {
        let (kind, rest) = if let Some(rest) = line.strip_prefix("record ") {
            ("record", rest)
        } else if let Some(rest) = line.strip_prefix("enum ") {
            ("enum", rest)
        } else {
            continue;
        };
        let (name, body) = rest.split_once('{').expect("a declaration opens a block");
        // A one-line enum (`enum side { source, target }`), or a member per line
        // (`name: type,` or `case,`; a type may hold commas: `tuple<string, u32>`).
        let members: Vec<String> = if body.contains('}') {
            body.trim_end_matches('}').split(',').map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).collect()
        } else {
            lines.by_ref().take_while(|l| !l.starts_with('}')).map(|l| l.split([':', ',']).next().unwrap().trim().to_string()).collect()
        };
        out.push((kind, name.trim().to_string(), members));
    }
    out
}

#[test]
fn the_reference_lists_every_record_and_field_of_the_newest_contract() {
    let wit = std::fs::read_to_string(root().join("wit/since_v0.2.0/plugin.wit")).unwrap();
    let doc = std::fs::read_to_string(root().join("docs/plugins.md")).unwrap();
    let reference = doc.split_once("## Reference").expect("docs/plugins.md has a Reference section").1;
    let decls = declarations(&wit);
    assert!(decls.len() > 30, "the WIT parsed to only {} declarations", decls.len());
    assert!(decls.iter().any(|(k, n, m)| *k == "record" && n == "plugin-manifest" && m.contains(&"inventory-settings".to_string())));
    let mut missing = Vec::new();
    for (kind, name, members) in &decls {
        let heading = format!("### `{name}`");
        let Some(section) = reference.split(&heading).nth(1) else {
            missing.push(format!("{kind} {name}"));
            continue;
        };
        let section = section.split("\n### ").next().unwrap();
        for member in members {
            if !section.contains(&format!("`{member}`")) {
                missing.push(format!("{kind} {name}: {member}"));
            }
        }
    }
    assert!(missing.is_empty(), "docs/plugins.md lacks, from wit/since_v0.2.0/plugin.wit:\n{}", missing.join("\n"));
}

#[test]
fn the_docs_are_linked() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(readme.contains("(docs/plugins.md)"), "README.md links docs/plugins.md");
    let doc = std::fs::read_to_string(root().join("docs/plugins.md")).unwrap();
    assert!(doc.contains("[docs/plugin-quickstart.md](plugin-quickstart.md)"), "docs/plugins.md links the quick start");
}
