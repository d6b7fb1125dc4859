//! `pgferry plugin new` and `pgferry plugin build`: a standalone plugin project (Rust or
//! Python) that builds outside this repository, and its reproducible build.
//!
//! The project carries its own copy of the SDK and of the WIT contract, taken from the files
//! this binary was built from (runner/build.rs embeds them), so that a user who installed
//! only `pgferry` builds with crates.io (Rust) or PyPI (componentize-py) alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

mod files {
    include!(concat!(env!("OUT_DIR"), "/scaffold_files.rs"));
}

/// The contract new projects are made for: the one place to change when scaffolds move to
/// another contract (the Rust SDK copied into them must be on the same one; a test checks).
pub const CONTRACT: &str = "0.2.0";

/// The contract of new Python projects (their WIT copy; the Python SDK follows it).
pub const PYTHON_CONTRACT: &str = "0.2.0";

/// The componentize-py release Python plugins are built and documented with.
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Rule,
    Adapter,
}

impl Kind {
    pub fn world(self) -> &'static str {
        match self {
            Kind::Rule => "validation-rule",
            Kind::Adapter => "source-adapter",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Rust,
    Python,
}

impl std::fmt::Display for Lang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
        })
    }
}

/// A name a plugin project may have: it becomes the crate or package name, the rule id
/// and (upper-cased) the adapter's source type id.
pub fn check_name(name: &str) -> Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
        && !name.contains("--");
    if !ok {
        bail!("plugin name {name:?} is not usable: use lowercase letters, digits and single hyphens, starting with a letter (e.g. `no-temp-tables`), at most 64 characters");
    }
    Ok(())
}

/// Writes a new project for plugin `name` into `dir`, which must not exist or be empty;
/// returns the files written, relative to `dir`.
pub fn new_project(dir: &Path, name: &str, kind: Kind, lang: Lang) -> Result<Vec<PathBuf>> {
    check_name(name)?;
    if dir.exists() && std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?.next().is_some() {
        bail!("{} exists and is not empty: give a new directory (--dir) or remove it", dir.display());
    }
    let struct_name: String = name.split('-').map(|w| w[..1].to_ascii_uppercase() + &w[1..]).collect();
    let vars = [
        ("{{name}}", name.to_string()),
        ("{{Struct}}", struct_name),
        ("{{ID}}", name.replace('-', "_").to_ascii_uppercase()),
        ("{{world}}", kind.world().to_string()),
        ("{{contract}}", match lang {
            Lang::Rust => CONTRACT,
            Lang::Python => PYTHON_CONTRACT,
        }
        .to_string()),
    ];
    let fill = |template: &str| vars.iter().fold(template.to_string(), |text, (key, value)| text.replace(key, value));
    let mut out: Vec<(PathBuf, String)> = Vec::new();
    match lang {
        Lang::Rust => {
            out.push(("Cargo.toml".into(), cargo_toml(name)));
            // A seed, not a pin: cargo keeps the versions this pgferry was tested with and
            // drops the packages the plugin does not use on its first build.
            out.push(("Cargo.lock".into(), files::CARGO_LOCK.to_string()));
            out.push(("rust-toolchain.toml".into(), toolchain()?));
            out.push(("README.md".into(), fill(include_str!("../templates/plugin/rust-README.md"))));
            out.push((".gitignore".into(), "/target\n".into()));
            let lib = match kind {
                Kind::Rule => include_str!("../templates/plugin/rust-rule-lib.rs"),
                Kind::Adapter => include_str!("../templates/plugin/rust-adapter-lib.rs"),
            };
            out.push(("src/lib.rs".into(), fill(lib)));
            out.push(("vendor/pgferry-sdk/Cargo.toml".into(), files::SDK_MANIFEST.to_string()));
            for (rel, text) in files::SDK_FILES {
                out.push((Path::new("vendor/pgferry-sdk/src").join(rel), text.to_string()));
            }
            // Beside the SDK, where its `wit_bindgen::generate!(path: "../wit/…")` looks.
            for (rel, text) in files::WIT_FILES {
                out.push((Path::new("vendor/wit").join(rel), text.to_string()));
            }
        }
        Lang::Python => {
            out.push(("pyproject.toml".into(), fill(include_str!("../templates/plugin/pyproject.toml"))));
            out.push(("README.md".into(), fill(include_str!("../templates/plugin/python-README.md"))));
            out.push((".gitignore".into(), "/.bindings/\n__pycache__/\n".into()));
            let (app, test) = match kind {
                Kind::Rule => (include_str!("../templates/plugin/python-rule-app.py"), include_str!("../templates/plugin/python-rule-test.py")),
                Kind::Adapter => (include_str!("../templates/plugin/python-adapter-app.py"), include_str!("../templates/plugin/python-adapter-test.py")),
            };
            out.push(("app.py".into(), fill(app)));
            out.push(("tests/test_app.py".into(), fill(test)));
            for (rel, text) in files::PYTHON_SDK_FILES {
                out.push((Path::new("pgferry_sdk").join(rel), text.to_string()));
            }
            let wit = contract_wit_dir(PYTHON_CONTRACT)?;
            for (rel, text) in files::WIT_FILES.iter().filter(|(rel, _)| Path::new(rel).starts_with(&wit)) {
                out.push((Path::new("wit").join(rel), text.to_string()));
            }
        }
    }
    for (rel, text) in &out {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).with_context(|| format!("cannot create {}", path.parent().unwrap().display()))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(out.into_iter().map(|(rel, _)| rel).collect())
}

/// `since_v0.1.0`: the WIT folder of `contract`.
fn contract_wit_dir(contract: &str) -> Result<String> {
    let dir = format!("since_v{contract}");
    if !files::WIT_FILES.iter().any(|(rel, _)| Path::new(rel).starts_with(&dir)) {
        bail!("this pgferry has no WIT folder wit/{dir} for contract {contract}");
    }
    Ok(dir)
}

fn cargo_toml(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# cdylib: the component; rlib: the native tests.
crate-type = ["cdylib", "rlib"]

[dependencies]
pgferry-sdk = {{ path = "vendor/pgferry-sdk" }}

# A workspace of its own, also when this folder sits inside another cargo workspace.
[workspace]

# What `pgferry plugin build` builds with: small, stripped, reproducible.
{}"#,
        files::PLUGIN_PROFILE
    )
}

/// The rust-toolchain.toml of a project: the channel and target this pgferry's own guests
/// are built with.
fn toolchain() -> Result<String> {
    let parsed: toml::Table = files::TOOLCHAIN.parse().context("the embedded rust-toolchain.toml")?;
    let channel = parsed.get("toolchain").and_then(|t| t.get("channel")).and_then(|c| c.as_str()).context("the embedded rust-toolchain.toml has no channel")?;
    Ok(format!(
        "# The toolchain pgferry's own plugins are built with; a build is reproducible only\n# with the same one. rustup installs it, with the wasm32-wasip2 target.\n[toolchain]\nchannel = \"{channel}\"\ntargets = [\"wasm32-wasip2\"]\nprofile = \"minimal\"\n"
    ))
}

/// A built plugin.
#[derive(Debug)]
pub struct Built {
    pub name: String,
    pub lang: Lang,
    /// `dist/<name>.wasm` in the project.
    pub wasm: PathBuf,
    pub sha256: String,
}

impl Built {
    /// The `[[plugin]]` block that pins this file in the runner's plugin configuration.
    pub fn plugin_block(&self) -> String {
        format!(
            "[[plugin]]\npath = {}\nsha256 = \"{}\"\n# grants = [\"sql\"]   # only if it runs read-only SQL\n# [plugin.settings]\n# key = \"value\"\n",
            toml::Value::String(self.wasm.display().to_string()),
            self.sha256
        )
    }
}

/// Builds the project in `dir` (a Cargo.toml: Rust; a pyproject.toml with `[tool.pgferry]`:
/// Python) into `dir/dist/<name>.wasm`. Tool output goes to stderr.
pub fn build(dir: &Path) -> Result<Built> {
    let dir = std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))?;
    if dir.join("Cargo.toml").is_file() {
        build_rust(&dir)
    } else if dir.join("pyproject.toml").is_file() {
        build_python(&dir)
    } else {
        bail!("{} holds neither Cargo.toml nor pyproject.toml: give the directory of a plugin project (`pgferry plugin new` makes one)", dir.display())
    }
}

fn build_rust(dir: &Path) -> Result<Built> {
    let manifest: toml::Table = std::fs::read_to_string(dir.join("Cargo.toml"))?.parse().with_context(|| format!("{}/Cargo.toml is not valid TOML", dir.display()))?;
    let name = manifest.get("package").and_then(|p| p.get("name")).and_then(|n| n.as_str()).with_context(|| format!("{}/Cargo.toml has no [package] name", dir.display()))?.to_string();
    // A workspace root must define the profile itself (a member gets its root's).
    if manifest.contains_key("workspace") && manifest.get("profile").and_then(|p| p.get("plugin")).is_none() {
        bail!("{}/Cargo.toml has no [profile.plugin]: add the one `pgferry plugin new` writes:\n{}", dir.display(), files::PLUGIN_PROFILE);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // rustc in the project's directory honours its rust-toolchain.toml, as cargo will.
    let sysroot = Command::new("rustc").current_dir(dir).args(["--print", "sysroot"]).output();
    let sysroot = match sysroot {
        Ok(out) if out.status.success() => PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
        Ok(out) => bail!("rustc failed in {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim()),
        Err(_) => bail!("rustc is not installed: install Rust with rustup (https://rustup.rs), then run `rustup target add wasm32-wasip2`"),
    };
    if !sysroot.join("lib/rustlib/wasm32-wasip2").is_dir() {
        bail!("the Rust target wasm32-wasip2 is not installed for the toolchain of {} ({}): run `rustup target add wasm32-wasip2` there", dir.display(), sysroot.display());
    }
    // Paths that reach the binary (panic locations) are made independent of where the
    // project and the cargo home are, so the same sources build the same bytes anywhere.
    let cargo_home = std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    let flags = [format!("--remap-path-prefix={cargo_home}=/cargo"), format!("--remap-path-prefix={}=/plugin", dir.display())];
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir)
        .args(["build", "--target", "wasm32-wasip2", "--profile", "plugin", "--message-format", "json-render-diagnostics"])
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        .env_remove("RUSTFLAGS")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("cargo build of {} failed ({}): see the compiler's messages above", dir.display(), out.status);
    }
    // cargo says where the component is (CARGO_TARGET_DIR and .cargo/config.toml move it).
    let built = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "cdylib")))
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "wasm"))
        .with_context(|| format!("cargo built no .wasm for {name}: its [lib] needs crate-type = [\"cdylib\", \"rlib\"]"))?;
    finish(dir, name, Lang::Rust, &built)
}

fn build_python(dir: &Path) -> Result<Built> {
    let path = dir.join("pyproject.toml");
    let project: toml::Table = std::fs::read_to_string(&path)?.parse().with_context(|| format!("{} is not valid TOML", path.display()))?;
    let name = project.get("project").and_then(|p| p.get("name")).and_then(|n| n.as_str()).with_context(|| format!("{} has no [project] name", path.display()))?.to_string();
    let tool = project.get("tool").and_then(|t| t.get("pgferry")).with_context(|| format!("{} has no [tool.pgferry] table (world, wit, module): is this a pgferry plugin?", path.display()))?;
    let key = |k: &str| tool.get(k).and_then(|v| v.as_str()).with_context(|| format!("{}: [tool.pgferry] needs `{k}`", path.display()));
    let (world, wit, module) = (key("world")?, key("wit")?, key("module")?);
    if !dir.join(wit).is_dir() {
        bail!("{}: [tool.pgferry] wit = {wit:?} is not a directory of the project", path.display());
    }
    // `path`: more directories of Python modules, relative to the project (e.g. a shared SDK).
    let mut python_path = vec![".".to_string()];
    for p in tool.get("path").and_then(|p| p.as_array()).into_iter().flatten() {
        let p = p.as_str().with_context(|| format!("{}: [tool.pgferry] path is a list of directories", path.display()))?;
        if !dir.join(p).is_dir() {
            bail!("{}: [tool.pgferry] path entry {p:?} is not a directory", path.display());
        }
        python_path.push(p.to_string());
    }
    std::fs::create_dir_all(dir.join("dist"))?;
    let staged = dir.join("dist").join(format!(".{name}.wasm.partial"));
    let mut cmd = Command::new("componentize-py");
    cmd.current_dir(dir).args(["-d", wit, "-w", world, "componentize"]);
    for p in &python_path {
        cmd.args(["-p", p]);
    }
    // Its chatter goes to stderr: stdout is for the [[plugin]] block.
    cmd.arg(module).arg("-o").arg(&staged).stdout(std::io::stderr()).stderr(Stdio::inherit());
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("componentize-py is not installed (it builds Python plugins): run `pip install {COMPONENTIZE_PY}`")
        }
        Err(e) => return Err(e).with_context(|| format!("running {cmd:?}")),
    };
    if !status.success() {
        let _ = std::fs::remove_file(&staged);
        bail!("componentize-py failed for {} ({status}): see its messages above", dir.display());
    }
    let result = finish(dir, name, Lang::Python, &staged);
    let _ = std::fs::remove_file(&staged);
    result
}

/// Copies the component to `dist/<name>.wasm` and hashes it.
fn finish(dir: &Path, name: String, lang: Lang, built: &Path) -> Result<Built> {
    let bytes = std::fs::read(built).with_context(|| format!("cannot read the built component {}", built.display()))?;
    let wasm = dir.join("dist").join(format!("{name}.wasm"));
    std::fs::create_dir_all(wasm.parent().unwrap())?;
    std::fs::write(&wasm, &bytes).with_context(|| format!("cannot write {}", wasm.display()))?;
    Ok(Built { name, lang, wasm, sha256: hex::encode(Sha256::digest(&bytes)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "no-temp-tables", "rule2"] {
            check_name(good).unwrap();
        }
        for bad in ["", "Rule", "2rule", "-x", "x-", "a--b", "a_b", "a.b", "../x"] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")) && e.contains("lowercase"), "{e}");
        }
    }

    #[test]
    fn the_sdk_copy_is_on_the_scaffold_contract() {
        // CONTRACT and the Rust SDK move together: a Rust scaffold builds with the SDK's WIT.
        let lib = files::SDK_FILES.iter().find(|(rel, _)| *rel == "lib.rs").unwrap().1;
        assert!(lib.contains(&format!("\"../wit/since_v{CONTRACT}\"")), "sdk/src/lib.rs does not generate from wit/since_v{CONTRACT}: change scaffold::CONTRACT with the SDK");
        contract_wit_dir(CONTRACT).unwrap();
        contract_wit_dir(PYTHON_CONTRACT).unwrap();
    }

    #[test]
    fn sdk_manifest_inherits_nothing() {
        let m: toml::Table = files::SDK_MANIFEST.parse().unwrap();
        assert_eq!(m["package"]["name"].as_str(), Some("pgferry-sdk"));
        assert!(m["package"]["version"].is_str() && m["package"]["edition"].is_str());
        assert!(!files::SDK_MANIFEST.contains("workspace = true"), "{}", files::SDK_MANIFEST);
        assert!(m["dependencies"]["wit-bindgen"]["version"].is_str());
    }

    #[test]
    fn rust_project_is_standalone() {
        let dir = tempfile_dir();
        let written = new_project(&dir, "no-temp-tables", Kind::Rule, Lang::Rust).unwrap();
        assert!(written.contains(&PathBuf::from("vendor/wit/since_v0.1.0/plugin.wit")));
        let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let parsed: toml::Table = cargo.parse().unwrap();
        assert_eq!(parsed["profile"]["plugin"]["lto"].as_bool(), Some(true));
        assert!(parsed.contains_key("workspace") && !cargo.contains(".workspace"), "{cargo}");
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains("pub struct NoTempTables;") && lib.contains("\"no-temp-tables\"") && !lib.contains("{{"), "{lib}");
        let again = new_project(&dir, "no-temp-tables", Kind::Rule, Lang::Rust).unwrap_err().to_string();
        assert!(again.contains("is not empty"), "{again}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn python_project_names_its_world_and_wit() {
        let dir = tempfile_dir();
        new_project(&dir, "my-cloud", Kind::Adapter, Lang::Python).unwrap();
        let py: toml::Table = std::fs::read_to_string(dir.join("pyproject.toml")).unwrap().parse().unwrap();
        assert_eq!(py["tool"]["pgferry"]["world"].as_str(), Some("source-adapter"));
        assert!(dir.join(py["tool"]["pgferry"]["wit"].as_str().unwrap()).join("plugin.wit").is_file());
        assert!(std::fs::read_to_string(dir.join("app.py")).unwrap().contains("ids=[\"MY_CLOUD\"]"));
        assert!(dir.join("pgferry_sdk/testing.py").is_file() && dir.join("pgferry_sdk/fixture.json").is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::env::temp_dir().join(format!("pgferry-scaffold-unit-{}-{n}", std::process::id()))
    }
}
