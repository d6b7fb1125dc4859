//! The runner names no provider: what differs between sources (their databases, roles,
//! schemas, settings, ids) comes from source-adapter plugins, so a new provider never needs
//! a runner change. This fails when a code line under runner/src (comments aside) mentions
//! one. The built-in plugins' names live in plugins/builtin.txt, outside runner/src.

use std::path::{Path, PathBuf};

/// Words that name a provider or its products; an identifier starting with one counts
/// (`rdsadmin`, `cloudsqladmin`, `azure_maintenance`).
const PROVIDERS: &[&str] = &[
    "rds", "aurora", "aws", "amazon", "azure", "microsoft", "cloudsql", "gcp", "google", "alloydb",
    "timescale", "supabase", "heroku", "crunchy", "aiven", "digitalocean",
];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| ["rs", "js", "html", "css"].contains(&e.to_str().unwrap())) {
            out.push(path);
        }
    }
}

/// The code of a line: without a `//` comment (one outside a string literal) and empty for
/// a line inside or starting a block comment or a doc comment.
fn code(line: &str) -> &str {
    let t = line.trim_start();
    if t.starts_with("//") || t.starts_with("/*") || t.starts_with('*') {
        return "";
    }
    let mut in_string = false;
    let bytes = line.as_bytes();
    for i in 0..bytes.len() {
        match bytes[i] {
            b'"' | b'\'' if i == 0 || bytes[i - 1] != b'\\' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') && i > 0 && bytes[i - 1] != b':' => return &line[..i],
            _ => {}
        }
    }
    line
}

/// Provider words the line's identifiers and words start with.
fn providers_in(code: &str) -> Vec<String> {
    code.split(|c: char| !c.is_ascii_alphanumeric())
        .map(str::to_ascii_lowercase)
        .filter(|word| PROVIDERS.iter().any(|p| word.starts_with(p)))
        .collect()
}

#[test]
fn the_matcher_sees_code_and_skips_comments() {
    assert_eq!(providers_in(code(r#"const P: &[&str] = &["rds.", "cloudsql."];"#)), ["rds", "cloudsql"]);
    assert_eq!(providers_in(code("    builtin!(\"adapter-aws-rds\"),")), ["aws", "rds"]);
    assert_eq!(providers_in(code("let x = 1; // like rds_superuser")), Vec::<String>::new());
    assert_eq!(providers_in(code("/// e.g. `rdsadmin`")), Vec::<String>::new());
    assert_eq!(providers_in(code("let url = \"https://x\"; // azure")), Vec::<String>::new());
    assert_eq!(providers_in(code("records, words, passwords")), Vec::<String>::new());
}

#[test]
fn runner_src_names_no_provider() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    assert!(all.len() > 20, "found only {} files under {}", all.len(), src.display());
    let mut hits = Vec::new();
    for file in all {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let words = providers_in(code(line));
            if !words.is_empty() {
                hits.push(format!("{}:{}: {words:?}: {}", file.strip_prefix(&src).unwrap().display(), n + 1, line.trim()));
            }
        }
    }
    assert!(hits.is_empty(), "runner/src names providers; move what differs into a source-adapter plugin:\n{}", hits.join("\n"));
}
