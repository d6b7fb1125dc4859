//! Embeds, from this repository's own files:
//! - the built-in plugins listed in plugins/builtin.txt (the runner's own code names none
//!   of them: which sources exist is the plugins' business);
//! - what `pgferry plugin new` writes into a project, so that a scaffold needs only
//!   crates.io (Rust) or PyPI (Python) and there is one source of truth: the Rust SDK
//!   (sdk/Cargo.toml with the workspace keys resolved, sdk/src), the WIT contract (wit/),
//!   the Python SDK (sdk/python/pgferry_sdk), the guest profile of the workspace
//!   Cargo.toml, the pinned toolchain and the lockfile (which seeds the versions).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    builtin_plugins();
    scaffold_files();
}

fn builtin_plugins() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let list = root.join("plugins").join("builtin.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    let text = std::fs::read_to_string(&list).unwrap_or_else(|e| panic!("{}: {e}", list.display()));
    let mut out = String::from("&[\n");
    for name in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let wasm = root.join("plugins").join("dist").join(format!("{name}.wasm"));
        let wasm = wasm.canonicalize().unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask build-plugins`", wasm.display()));
        // include_bytes! makes cargo rebuild when the file changes.
        out.push_str(&format!("    ({name:?}, include_bytes!({:?}).as_slice()),\n", wasm.display().to_string()));
    }
    out.push_str("]\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("builtin.rs");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("{}: {e}", dest.display()));
}

fn scaffold_files() {
    let root = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).parent().unwrap().to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("scaffold_files.rs");
    let mut code = String::new();

    let workspace: toml::Table = read(&root.join("Cargo.toml")).parse().expect("workspace Cargo.toml");
    writeln!(code, "/// sdk/Cargo.toml with the workspace's keys filled in.").unwrap();
    writeln!(code, "pub const SDK_MANIFEST: &str = {:?};", sdk_manifest(&root, &workspace)).unwrap();
    writeln!(code, "/// The workspace's `[profile.plugin]` table, as TOML.").unwrap();
    writeln!(code, "pub const PLUGIN_PROFILE: &str = {:?};", plugin_profile(&workspace)).unwrap();

    for (name, dir, what) in [
        ("SDK_FILES", root.join("sdk/src"), "sdk/src, relative to it"),
        ("WIT_FILES", root.join("wit"), "wit/, relative to it"),
        ("PYTHON_SDK_FILES", root.join("sdk/python/pgferry_sdk"), "sdk/python/pgferry_sdk, relative to it"),
    ] {
        let mut files = Vec::new();
        collect(&dir, &dir, &mut files);
        files.sort();
        assert!(!files.is_empty(), "{} holds no files", dir.display());
        writeln!(code, "/// The files of {what}.").unwrap();
        writeln!(code, "pub const {name}: &[(&str, &str)] = &[").unwrap();
        for (rel, abs) in files {
            writeln!(code, "    ({rel:?}, include_str!({abs:?})),").unwrap();
        }
        writeln!(code, "];").unwrap();
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    for (name, file) in [("TOOLCHAIN", "rust-toolchain.toml"), ("CARGO_LOCK", "Cargo.lock")] {
        writeln!(code, "pub const {name}: &str = include_str!({:?});", root.join(file).display().to_string()).unwrap();
    }
    println!("cargo:rerun-if-changed={}", root.join("Cargo.toml").display());
    println!("cargo:rerun-if-changed={}", root.join("sdk/Cargo.toml").display());
    std::fs::write(out, code).unwrap();
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Text files below `dir` (skipping Python caches), as (path relative to `base`, absolute path).
fn collect(base: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if name == "__pycache__" || name.ends_with(".pyc") {
            continue;
        }
        if path.is_dir() {
            collect(base, &path, files);
        } else {
            let rel = path.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            files.push((rel, path.display().to_string()));
        }
    }
}

/// What `cargo package` would write: every `key.workspace = true` replaced by the
/// workspace's value, so the SDK builds outside this workspace.
fn sdk_manifest(root: &Path, workspace: &toml::Table) -> String {
    let mut sdk: toml::Table = read(&root.join("sdk/Cargo.toml")).parse().expect("sdk/Cargo.toml");
    let ws = workspace["workspace"].as_table().unwrap();
    let package = sdk.get_mut("package").and_then(toml::Value::as_table_mut).unwrap();
    for (key, value) in package.iter_mut() {
        if inherits(value) {
            *value = ws["package"][key.as_str()].clone();
        }
    }
    for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
        let Some(deps) = sdk.get_mut(section).and_then(toml::Value::as_table_mut) else { continue };
        for (name, dep) in deps.iter_mut() {
            if !inherits(dep) {
                continue;
            }
            let from_ws = ws["dependencies"].get(name.as_str()).unwrap_or_else(|| panic!("sdk dependency {name} is not in [workspace.dependencies]")).clone();
            // `{ workspace = true, features = [..] }` adds features to the workspace's.
            let mut resolved = match from_ws {
                toml::Value::String(version) => toml::Table::from_iter([("version".to_string(), toml::Value::String(version))]),
                toml::Value::Table(t) => t,
                other => panic!("workspace dependency {name}: unexpected {other}"),
            };
            assert!(!resolved.contains_key("path"), "sdk dependency {name} is a path dependency: a scaffold cannot vendor it");
            if let Some(extra) = dep.get("features").and_then(toml::Value::as_array) {
                let features = resolved.entry("features").or_insert_with(|| toml::Value::Array(vec![]));
                features.as_array_mut().unwrap().extend(extra.iter().cloned());
            }
            *dep = toml::Value::Table(resolved);
        }
    }
    format!("# pgferry's SDK as `pgferry plugin new` copies it (sdk/Cargo.toml, workspace keys filled in).\n{sdk}")
}

fn inherits(value: &toml::Value) -> bool {
    value.get("workspace").and_then(toml::Value::as_bool) == Some(true)
}

fn plugin_profile(workspace: &toml::Table) -> String {
    let profile = workspace["profile"]["plugin"].as_table().expect("[profile.plugin] in the workspace Cargo.toml").clone();
    let doc = toml::Table::from_iter([("profile".to_string(), toml::Value::Table(toml::Table::from_iter([("plugin".to_string(), toml::Value::Table(profile))])))]);
    doc.to_string()
}
