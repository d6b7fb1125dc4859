//! Project tasks: `cargo xtask build-plugins | check-plugins | test | demo`.
//!
//! Guest components (built-in plugins, test fixtures, examples) are built for
//! wasm32-wasip2 and committed under `*/dist/`, so a plain `cargo build` of the runner needs
//! no wasm toolchain step and no nested cargo. `check-plugins` rebuilds them and fails when a
//! committed artefact is stale or a guest has no host test; CI runs it through `test`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Folders whose subfolders are guest crates, each with the `dist/` their artefacts go to.
const GUEST_DIRS: &[&str] = &["plugins", "tests/guests", "examples"];

/// Where host tests live: every guest's name must appear in one of these files.
const HOST_TEST_DIRS: &[&str] = &["tests/tests", "runner/tests"];

fn main() -> Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    let root = workspace_root();
    match task.as_str() {
        "build-plugins" => build_plugins(&root, &root),
        "check-plugins" => check_plugins(&root),
        "test" => {
            check_plugins(&root)?;
            // The end-to-end tests run this binary; building it first keeps them from
            // each waiting on a nested build.
            run(Command::new(cargo()).current_dir(&root).args(["build", "-p", "pgferry", "--bin", "pgferry"]))?;
            run(Command::new(cargo()).current_dir(&root).args(["test", "--workspace", "--no-fail-fast"]))
        }
        "demo" => demo(&root),
        _ => bail!("usage: cargo xtask build-plugins | check-plugins | test | demo"),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

struct Guest {
    package: String,
    dist: PathBuf,
}

fn guests(root: &Path) -> Result<Vec<Guest>> {
    let mut guests = Vec::new();
    for dir in GUEST_DIRS {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
        let mut crates: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.join("Cargo.toml").exists()).collect();
        crates.sort();
        for krate in crates {
            let manifest = std::fs::read_to_string(krate.join("Cargo.toml"))?;
            let package = manifest
                .lines()
                .find_map(|l| l.trim().strip_prefix("name = \"")?.strip_suffix('"').map(str::to_string))
                .with_context(|| format!("{}: no package name", krate.display()))?;
            guests.push(Guest { package, dist: root.join(dir).join("dist") });
        }
    }
    Ok(guests)
}

/// Builds every guest and writes `<dist>/<package>.wasm` below `out_root` (mirroring the
/// workspace layout).
fn build_plugins(root: &Path, out_root: &Path) -> Result<()> {
    let guests = guests(root)?;
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root).args(["build", "--target", "wasm32-wasip2", "--profile", "plugin", "--locked"]);
    for g in &guests {
        cmd.args(["-p", &g.package]);
    }
    // Panic messages embed source paths: make them independent of where the checkout and
    // the cargo home are, so every machine builds the same bytes.
    let cargo_home = std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    let flags = [format!("--remap-path-prefix={cargo_home}=/cargo"), format!("--remap-path-prefix={}=/pgferry", root.display())];
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));
    run(&mut cmd)?;
    let target_dir = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    for g in &guests {
        let built = target_dir.join("wasm32-wasip2/plugin").join(format!("{}.wasm", g.package.replace('-', "_")));
        let dist = out_root.join(g.dist.strip_prefix(root)?);
        std::fs::create_dir_all(&dist)?;
        std::fs::copy(&built, dist.join(format!("{}.wasm", g.package)))
            .with_context(|| format!("copying {}", built.display()))?;
    }
    println!("built {} guest components", guests.len());
    Ok(())
}

fn check_plugins(root: &Path) -> Result<()> {
    let guests = guests(root)?;
    let mut problems = Vec::new();

    // Every guest needs a host test that loads it (wasmtime test-programs' rule).
    let mut host_tests = String::new();
    for dir in HOST_TEST_DIRS {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "rs") {
                host_tests.push_str(&std::fs::read_to_string(e.path())?);
            }
        }
    }
    for g in &guests {
        if !host_tests.contains(&format!("\"{}\"", g.package)) {
            problems.push(format!("guest `{}` has no host test (name it as \"{}\" in a test under {})", g.package, g.package, HOST_TEST_DIRS.join(" or ")));
        }
    }

    let scratch = std::env::temp_dir().join(format!("pgferry-xtask-{}", std::process::id()));
    build_plugins(root, &scratch)?;
    for g in &guests {
        let rel = g.dist.strip_prefix(root)?.join(format!("{}.wasm", g.package));
        let fresh = std::fs::read(scratch.join(&rel))?;
        match std::fs::read(root.join(&rel)) {
            Ok(committed) if committed == fresh => {}
            Ok(_) => problems.push(format!("{} is stale: run `cargo xtask build-plugins` and commit it", rel.display())),
            Err(_) => problems.push(format!("{} is missing: run `cargo xtask build-plugins` and commit it", rel.display())),
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    if !problems.is_empty() {
        bail!("guest components are not in order:\n  {}", problems.join("\n  "));
    }
    println!("{} guest components are current and tested", guests.len());
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Starts two throwaway local servers, loads a sample database into the source, checks it
/// for an online migration, then validates and migrates it offline: the README's first command.
fn demo(root: &Path) -> Result<()> {
    use pgferry_tests::Cluster;
    run(Command::new(cargo()).current_dir(root).args(["build", "--release", "-p", "pgferry"]))?;
    let bin = root.join("target/release/pgferry");
    println!("==> starting a source and a target PostgreSQL server (throwaway, loopback only)");
    let source = Cluster::builder().setting("wal_level", "logical").start()?;
    let target = Cluster::start()?;
    source.create_database("pagila")?;
    match pgferry_tests::corpus_dir() {
        Some(corpus) => {
            println!("==> loading pagila from {} into the source", corpus.display());
            for file in ["pagila/pagila-schema.sql", "pagila/pagila-data.sql"] {
                source.psql_file("pagila", &corpus.join(file), false)?;
            }
        }
        None => {
            println!("==> ../shared/corpus not found: loading a small sample schema instead");
            source.psql("pagila", "create table film (film_id serial primary key, title text not null); \
                insert into film (title) select 'film ' || g from generate_series(1, 1000) g; \
                create table film_log (at timestamptz default now(), line text);")?;
        }
    }
    let dir = tempfile::tempdir()?;
    let props = dir.path().join("properties.json");
    std::fs::write(
        &props,
        format!(
            r#"{{"properties": {{"SourceDBServerResourceId": "127.0.0.1:{}@postgres", "targetServerUserName": "postgres",
                "DBsToMigrate": ["pagila"], "OverwriteDBsInTarget": "false", "sourceType": "OnPremises", "sslMode": "Prefer"}}}}"#,
            source.port()
        ),
    )?;
    let target_arg = format!("127.0.0.1:{}", target.port());
    let pgferry = |args: &[&str]| -> Result<()> {
        println!("\n$ pgferry {}", args.join(" "));
        let status = Command::new(&bin).env("PGFERRY_STATE_DIR", dir.path().join("state")).args(args).status()?;
        println!("(exit code {})", status.code().unwrap_or(-1));
        Ok(())
    };
    let props = props.display().to_string();
    pgferry(&["migration", "create", "--migration-name", "demo-online-check", "--properties", &props, "--target", &target_arg, "--migration-option", "Validate", "--migration-mode", "Online"])?;
    pgferry(&["migration", "create", "--migration-name", "demo", "--properties", &props, "--target", &target_arg, "--migration-option", "ValidateAndMigrate"])?;
    let tables = target.psql("pagila", "select count(*) from pg_tables where schemaname = 'public'")?;
    println!("\n==> the target now holds database pagila with {tables} tables");

    println!("\n==> online: the same database into a second target while the source keeps changing");
    let online_target = Cluster::start()?;
    let online_target_arg = format!("127.0.0.1:{}", online_target.port());
    let state = dir.path().join("state");
    let show_json = || -> Result<serde_json::Value> {
        let out = Command::new(&bin).env("PGFERRY_STATE_DIR", &state).args(["migration", "show", "--migration-name", "demo-online", "--output", "json"]).output()?;
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    pgferry(&["migration", "create", "--migration-name", "demo-online", "--properties", &props, "--target", &online_target_arg, "--migration-mode", "Online", "--migration-option", "Migrate", "--no-wait"])?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let doc = show_json()?;
        if doc["substate"] == "WaitingForCutoverTrigger" {
            break;
        }
        anyhow::ensure!(doc["state"] != "Failed" && std::time::Instant::now() < deadline, "the online migration did not reach WaitingForCutoverTrigger: {doc:#}");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    println!("==> caught up; writing to the source while the migration waits for the cutover");
    let writes = if pgferry_tests::corpus_dir().is_some() {
        "insert into actor (first_name, last_name) select 'DEMO', 'ACTOR ' || g from generate_series(1, 500) g; \
         update film set rental_rate = rental_rate + 1 where film_id <= 100; delete from film_actor where film_id = 1;"
    } else {
        "insert into film (title) select 'new film ' || g from generate_series(1, 500) g; update film set title = title || '!' where film_id <= 100;"
    };
    source.psql("pagila", writes)?;
    std::thread::sleep(std::time::Duration::from_secs(2));
    pgferry(&["migration", "show", "--migration-name", "demo-online"])?;
    pgferry(&["migration", "update", "--migration-name", "demo-online", "--cutover"])?;
    pgferry(&["migration", "list"])?;
    println!("\n==> done; the servers are stopped and removed");
    Ok(())
}
