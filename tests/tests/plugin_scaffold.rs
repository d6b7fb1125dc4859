//! `pgferry plugin new` and `pgferry plugin build` end to end, in temp directories outside
//! this workspace: a new project passes its native tests, builds, is pinned in a plugin
//! configuration with the printed block, and its rule's finding shows in a real validation
//! against throwaway servers; for Rust and for Python. A Rust build is reproducible across
//! directories; what is missing is named with the command that installs it.
//!
//! Cargo builds of the scaffolded projects share one target directory under the workspace's
//! (target/scaffold-tests), so wit-bindgen and serde are compiled once, not per test.

use std::path::{Path, PathBuf};
use std::process::Command;

use pgferry_tests::{stabilize, workspace_root, Cluster, Pgferry};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn scaffold_target_dir() -> PathBuf {
    workspace_root().join("target/scaffold-tests")
}

/// A temp directory outside the workspace (a standalone project must not find it).
fn outside() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("pgferry-scaffold-").tempdir().unwrap();
    assert!(!dir.path().starts_with(workspace_root()), "{} is inside the workspace", dir.path().display());
    dir
}

/// Runs a tool of the plugin author's (cargo, python3) in `dir`; panics with its output
/// when it fails.
fn run(dir: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir).args(args).env("CARGO_TARGET_DIR", scaffold_target_dir());
    // Not this test's cargo environment: the project is a workspace of its own.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_") || ["CARGO_MANIFEST_DIR", "CARGO_CRATE_NAME", "CARGO_PRIMARY_PACKAGE", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS"].contains(&&*key) {
            cmd.env_remove(&*key);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("running {program}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {args:?} in {} failed:\n{text}", dir.display());
    text
}

/// The compile cache of one test's pgferry runs. Each Python build is a new 18 MB component
/// (componentize-py builds differ byte for byte) that compiles to ~35 MB: in the shared test
/// cache they would pile up run after run; this one goes away with the test.
fn cache_dir(pf: &Pgferry) -> String {
    pf.dir().join("cache").display().to_string()
}

/// `pgferry ARGS` with this test's compile cache.
fn cli(pf: &Pgferry, args: &[&str]) -> pgferry_tests::CliOutput {
    pf.run_with(args, &[("PGFERRY_CACHE_DIR", &cache_dir(pf))])
}

/// `pgferry` in `cwd`, building with the scaffold tests' target dir.
fn pgferry(pf: &Pgferry, cwd: &Path, args: &[&str]) -> pgferry_tests::CliOutput {
    let mut cmd = pf.command();
    cmd.current_dir(cwd).args(args).env("CARGO_TARGET_DIR", scaffold_target_dir()).env("PGFERRY_CACHE_DIR", cache_dir(pf));
    // The author's cargo and rustup homes, not the test installation's empty HOME.
    let home = std::env::var("HOME").unwrap();
    cmd.env("CARGO_HOME", std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{home}/.cargo")));
    cmd.env("RUSTUP_HOME", std::env::var("RUSTUP_HOME").unwrap_or_else(|_| format!("{home}/.rustup")));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_") || ["CARGO_MANIFEST_DIR", "CARGO_CRATE_NAME", "CARGO_PRIMARY_PACKAGE"].contains(&&*key) {
            cmd.env_remove(&*key);
        }
    }
    let out = cmd.output().expect("running pgferry");
    pgferry_tests::CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn sha256_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// Whether the Python tests can run: componentize-py present. Absent, a test skips with a
/// message, except in CI (`CI=true`), where it must be there (`.ci/run` installs it).
fn componentize_py_available() -> bool {
    let found = Command::new("componentize-py").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var("CI").is_err(), "componentize-py is not installed, and CI is set: `bash .ci/run` installs it (pip install componentize-py==0.25.1)");
        eprintln!("SKIPPED: componentize-py is not installed (pip install componentize-py==0.25.1; bash .ci/run does it)");
    }
    found
}

/// The `[[plugin]]` block `plugin build` printed, checked against the file it names.
fn pinned(out: &pgferry_tests::CliOutput) -> (PathBuf, String) {
    assert_eq!(out.code, 0, "{}", out.transcript());
    let block: toml::Table = out.stdout.parse().unwrap_or_else(|e| panic!("the printed block is not TOML: {e}\n{}", out.stdout));
    let entry = &block["plugin"].as_array().expect("a [[plugin]] array")[0];
    let path = PathBuf::from(entry["path"].as_str().unwrap());
    let sha = entry["sha256"].as_str().unwrap().to_string();
    assert_eq!(sha, sha256_of(&path), "the pin is the file's sha256");
    (path, sha)
}

/// Validates database `app` of a source holding `orders` and the leftover `tmp_import`,
/// with the plugin configuration `plugins`, and returns the validation's database checks
/// and the table output of a second run (as docs/plugin-quickstart.md shows it).
fn validate_with(pf: &Pgferry, plugins: &Path) -> (Vec<Value>, String) {
    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("app").unwrap();
    source.psql("app", "create table public.orders (id int primary key); create table public.tmp_import (line text);").unwrap();
    let props = pf.properties(&source, "app", serde_json::json!({}));
    let target_arg = format!("127.0.0.1:{}", target.port());
    let out = cli(pf, &["--plugins", &plugins.display().to_string(), "migration", "create", "--migration-name", "scaffolded", "--properties", &props, "--target", &target_arg, "--migration-option", "Validate", "--output", "json"]);
    assert_eq!(out.code, 4, "the leftover table fails validation (exit 4): {}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["state"], "ValidationFailed");
    let table = cli(pf, &["--plugins", &plugins.display().to_string(), "migration", "create", "--migration-name", "scaffolded-2", "--properties", &props, "--target", &target_arg, "--migration-option", "Validate"]);
    assert_eq!(table.code, 4, "{}", table.transcript());
    let table = stabilize(&table.stdout, &[(source.port(), "SOURCE_PORT"), (target.port(), "TARGET_PORT")], pf.dir());
    (doc["validation"]["dbLevel"][0]["checks"].as_array().unwrap().clone(), table)
}

/// The scaffolded rule's check in a validation: it names the plugin, fails, and its one
/// finding is the leftover table, with a remediation.
fn assert_rule_fired(checks: &[Value], plugin: &str) {
    let check = checks.iter().find(|c| c["id"] == plugin).unwrap_or_else(|| panic!("no check {plugin} in {checks:#?}"));
    assert_eq!(check["plugin"], plugin);
    assert_eq!(check["state"], "Failed");
    let findings = check["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0]["code"], "leftover-table");
    assert_eq!(findings[0]["severity"], "error");
    assert_eq!(findings[0]["object"], "public.tmp_import");
    assert!(findings[0]["remediation"].as_str().unwrap().contains("Drop `public.tmp_import`"), "{findings:#?}");
}

/// Writes `plugins.toml` with exactly the block `plugin build` printed.
fn pin(pf: &Pgferry, out: &pgferry_tests::CliOutput) -> PathBuf {
    pf.write("plugins.toml", &out.stdout)
}

#[test]
fn rust_rule_from_new_to_its_finding_in_a_real_validation() {
    let pf = Pgferry::new();
    let home = outside();
    let new = pgferry(&pf, home.path(), &["plugin", "new", "rule", "no-temp-tables"]);
    assert_eq!(new.code, 0, "{}", new.transcript());
    assert!(new.stdout.contains("cargo test") && new.stdout.contains("pgferry plugin build ."), "{}", new.transcript());
    let project = home.path().join("no-temp-tables");
    assert!(project.join("vendor/pgferry-sdk/src/lib.rs").is_file() && project.join("README.md").is_file());

    let tests = run(&project, "cargo", &["test"], &[]);
    assert!(tests.contains("test result: ok. 4 passed"), "the starter rule's native tests ran:\n{tests}");

    let built = pgferry(&pf, home.path(), &["plugin", "build", "no-temp-tables"]);
    let (wasm, _) = pinned(&built);
    assert_eq!(wasm, project.join("dist/no-temp-tables.wasm"));
    assert!(built.stderr.contains("validation-rule") && built.stderr.contains("provides: no-temp-tables"), "{}", built.transcript());

    let (checks, table) = validate_with(&pf, &pin(&pf, &built));
    assert_rule_fired(&checks, "no-temp-tables");
    insta::assert_snapshot!("rust_rule_validate_table", table);
    // docs/plugin-quickstart.md shows this row as what the reader will see.
    let quickstart = std::fs::read_to_string(workspace_root().join("docs/plugin-quickstart.md")).unwrap();
    let row: Vec<&str> = table.lines().skip_while(|l| !l.contains("FAIL no-temp-tables/")).take(3).collect();
    assert_eq!(row.len(), 3, "{table}");
    for line in row {
        assert!(quickstart.contains(line), "docs/plugin-quickstart.md does not show {line:?}");
    }
}

#[test]
fn python_rule_from_new_to_its_finding_in_a_real_validation() {
    if !componentize_py_available() {
        return;
    }
    let pf = Pgferry::new();
    let home = outside();
    let new = pgferry(&pf, home.path(), &["plugin", "new", "rule", "py-temp-tables", "--lang", "python"]);
    assert_eq!(new.code, 0, "{}", new.transcript());
    let project = home.path().join("py-temp-tables");

    let tests = run(&project, "python3", &["-m", "unittest", "discover", "-s", "tests"], &[]);
    assert!(tests.contains("Ran 4 tests") && tests.contains("\nOK"), "the starter rule's native tests ran:\n{tests}");

    let built = pgferry(&pf, &project, &["plugin", "build"]);
    let (wasm, _) = pinned(&built);
    assert_eq!(wasm, project.join("dist/py-temp-tables.wasm"));

    let (checks, _) = validate_with(&pf, &pin(&pf, &built));
    assert_rule_fired(&checks, "py-temp-tables");
}

#[test]
fn a_rust_plugin_builds_to_the_same_bytes_in_two_directories() {
    let pf = Pgferry::new();
    let (one, two) = (outside(), outside());
    let mut shas = Vec::new();
    for home in [&one, &two] {
        let new = pgferry(&pf, home.path(), &["plugin", "new", "rule", "same-bytes"]);
        assert_eq!(new.code, 0, "{}", new.transcript());
        // The remapped project path differs between the two, so cargo rebuilds the plugin
        // and its dependencies rather than reusing the first build.
        let built = pgferry(&pf, home.path(), &["plugin", "build", "same-bytes"]);
        let (wasm, sha) = pinned(&built);
        let bytes = std::fs::read(&wasm).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(&home.path().display().to_string()), "the component embeds its build directory");
        shas.push(sha);
    }
    assert_eq!(shas[0], shas[1], "built in {} and {}", one.path().display(), two.path().display());
}

#[test]
fn adapters_from_new_pass_their_tests_build_and_load() {
    let pf = Pgferry::new();
    let home = outside();
    let mut langs = vec!["rust"];
    if componentize_py_available() {
        langs.push("python");
    }
    for lang in langs {
        let name = format!("{lang}-cloud");
        let new = pgferry(&pf, home.path(), &["plugin", "new", "adapter", &name, "--lang", lang]);
        assert_eq!(new.code, 0, "{}", new.transcript());
        let project = home.path().join(&name);
        let tests = match lang {
            "rust" => run(&project, "cargo", &["test"], &[]),
            _ => run(&project, "python3", &["-m", "unittest", "discover", "-s", "tests"], &[]),
        };
        assert!(tests.contains("test result: ok. 3 passed") || tests.contains("Ran 3 tests"), "{tests}");
        let built = pgferry(&pf, &project, &["plugin", "build", "--output", "json"]);
        assert_eq!(built.code, 0, "{}", built.transcript());
        let doc: Value = serde_json::from_str(&built.stdout).unwrap();
        assert_eq!(doc["world"], "source-adapter");
        let id = name.replace('-', "_").to_ascii_uppercase();
        assert_eq!(doc["provides"], serde_json::json!([id]));
        assert_eq!(doc["sha256"], sha256_of(Path::new(doc["file"].as_str().unwrap())));

        // Pinned, it is a source type the runner knows.
        let config = pf.write(&format!("{name}.toml"), doc["plugin"].as_str().unwrap());
        let list = cli(&pf, &["--plugins", &config.display().to_string(), "plugin", "list", "--output", "json"]);
        let rows: Value = serde_json::from_str(&list.stdout).unwrap();
        assert!(rows.as_array().unwrap().iter().any(|r| r["name"] == name.as_str() && r["ids"][0] == id.as_str()), "{}", list.transcript());
    }
}

#[test]
fn new_and_build_name_what_is_wrong_and_what_to_run() {
    let pf = Pgferry::new();
    let home = outside();
    let out = pgferry(&pf, home.path(), &["plugin", "new", "rule", "Bad_Name"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("\"Bad_Name\" is not usable"), "{}", out.transcript());

    let out = pgferry(&pf, home.path(), &["plugin", "build", "."]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("holds neither Cargo.toml nor pyproject.toml") && out.stderr.contains("pgferry plugin new"), "{}", out.transcript());

    // Tools missing: a PATH with a rustc whose toolchain has no wasm32-wasip2, and no
    // componentize-py.
    let bin = home.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let rustc = bin.join("rustc");
    std::fs::write(&rustc, format!("#!/bin/sh\necho {}\n", home.path().join("empty-sysroot").display())).unwrap();
    std::fs::set_permissions(&rustc, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:/usr/bin:/bin", bin.display());
    for (lang, expected) in [("rust", "run `rustup target add wasm32-wasip2`"), ("python", "run `pip install componentize-py==0.25.1`")] {
        let name = format!("{lang}-missing");
        assert_eq!(pgferry(&pf, home.path(), &["plugin", "new", "rule", &name, "--lang", lang]).code, 0);
        let mut cmd = pf.command();
        let out = cmd.current_dir(home.path()).args(["plugin", "build", &name]).env("PATH", &path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{lang}: {stderr}");
    }
}

/// A component this runner would refuse is refused by `plugin build`, not at migration time:
/// here a Python project whose contract copy was edited to a version the runner does not host.
#[test]
fn build_refuses_a_component_the_runner_cannot_load() {
    if !componentize_py_available() {
        return;
    }
    let pf = Pgferry::new();
    let home = outside();
    assert_eq!(pgferry(&pf, home.path(), &["plugin", "new", "rule", "future-rule", "--lang", "python"]).code, 0);
    let wit = home.path().join("future-rule/wit/since_v0.2.0/plugin.wit");
    let text = std::fs::read_to_string(&wit).unwrap();
    let edited = text.replace("package pgferry:plugin@0.2.0;", "package pgferry:plugin@0.9.0;");
    assert_ne!(edited, text, "the package line was found");
    std::fs::write(&wit, edited).unwrap();
    let out = pgferry(&pf, home.path(), &["plugin", "build", "future-rule"]);
    assert_eq!(out.code, 1, "{}", out.transcript());
    assert!(out.stdout.is_empty(), "no block for a component that cannot run: {}", out.transcript());
    assert!(out.stderr.contains("future-rule.wasm was built but this runner cannot load it"), "{}", out.transcript());
    assert!(out.stderr.contains("was built for plugin contract 0.9.0, newer than this runner knows (it hosts contracts 0.1.0, 0.2.0)"), "{}", out.transcript());
}

/// examples/python-table-owners: its native tests pass, it builds, and against a real
/// server it names the one table whose owner is not allowed.
#[test]
fn python_example_rule_fires_on_a_real_server() {
    if !componentize_py_available() {
        return;
    }
    let example = workspace_root().join("examples/python-table-owners");
    let sdk = workspace_root().join("sdk/python");
    let tests = run(&example, "python3", &["-m", "unittest", "discover", "-s", "tests"], &[("PYTHONPATH", &sdk.display().to_string())]);
    assert!(tests.contains("Ran 4 tests") && tests.contains("\nOK"), "{tests}");

    let pf = Pgferry::new();
    let built = pgferry(&pf, &example, &["plugin", "build", "."]);
    let (wasm, _) = pinned(&built);

    let source = Cluster::start().unwrap();
    let target = Cluster::start().unwrap();
    source.create_database("app").unwrap();
    source
        .psql(
            "app",
            "create role app_owner; create table public.orders (id int primary key); alter table public.orders owner to app_owner; \
             create table public.audit (line text); \
             create table public.events (at date) partition by range (at); alter table public.events owner to app_owner; \
             create table public.events_2026 partition of public.events for values from ('2026-01-01') to ('2027-01-01'); \
             alter table public.events_2026 owner to app_owner;",
        )
        .unwrap();
    let props = pf.properties(&source, "app", serde_json::json!({}));
    let target_arg = format!("127.0.0.1:{}", target.port());
    let wasm = wasm.display().to_string();
    let out = cli(&pf, &["plugin", "test", &wasm, "--properties", &props, "--target", &target_arg, "--setting", "owners=app_owner", "--output", "json"]);
    assert_eq!(out.code, 4, "an error finding exits 4: {}", out.transcript());
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    let findings: Vec<&Value> = doc["dbLevel"][0]["checks"].as_array().unwrap().iter().flat_map(|c| c["findings"].as_array().unwrap()).collect();
    assert_eq!(findings.len(), 1, "{}", out.stdout);
    assert_eq!(findings[0]["code"], "table-owner-not-allowed");
    assert_eq!(findings[0]["object"], "public.audit");
    assert!(findings[0]["remediation"].as_str().unwrap().contains("ALTER TABLE public.audit OWNER TO app_owner;"), "{}", out.stdout);

    // A real inventory dump is a Python fixture: natively, the rule says the same.
    let dump = cli(&pf, &["inventory", "dump", "--properties", &props, "--target", &target_arg]);
    assert_eq!(dump.code, 0, "{}", dump.transcript());
    let dump = pf.write("dump.json", &dump.stdout);
    let script = format!(
        "from pgferry_sdk import testing\nimport app\nfx = testing.Fixture.load({:?})\nfx.settings['owners'] = 'app_owner'\n\
         for f in fx.check(app.Rules, 'table-owners', fx.context(database='app')): print(f.code, f.object, f.severity.name)\n\
         print(sorted(t.kind.name for t in fx.source_database('app').tables))\n",
        dump.display().to_string()
    );
    let native = run(&example, "python3", &["-c", &script], &[("PYTHONPATH", &sdk.display().to_string())]);
    assert_eq!(native, "table-owner-not-allowed public.audit ERROR\n['PARTITIONED_TABLE', 'TABLE', 'TABLE', 'TABLE']\n", "{native}");

    // Without its required setting (its manifest says so) the runner refuses it at load,
    // naming the setting and how to give it.
    let out = cli(&pf, &["plugin", "test", &wasm, "--properties", &props, "--target", &target_arg]);
    assert_eq!(out.code, 1, "{}", out.transcript());
    assert!(out.stderr.contains("setting `owners` is required") && out.stderr.contains("--setting owners="), "{}", out.transcript());
}

/// The Python SDK's default fixture is the Rust SDK's `Fixture::new()`, written by this
/// test (`PGFERRY_UPDATE_FIXTURE=1`) so that there is one source of truth.
#[test]
fn python_sdk_default_fixture_is_the_rust_sdks() {
    let path = workspace_root().join("sdk/python/pgferry_sdk/fixture.json");
    let fresh = serde_json::to_string_pretty(&pgferry_sdk::testing::Fixture::new()).unwrap() + "\n";
    if std::env::var_os("PGFERRY_UPDATE_FIXTURE").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(committed == fresh, "{} is not the Rust SDK's Fixture::new(): run `PGFERRY_UPDATE_FIXTURE=1 cargo test -p pgferry-tests --test plugin_scaffold -- fixture` and commit it", path.display());
}
