//! The web console of `pgferry serve` in a real Chromium, driven over WebDriver (chromedriver,
//! started here; the `fantoccini` crate): the wizard end to end against real clusters, the
//! grid and the details page, a ValidationFailed case's findings, Cutover and Cancel clicked
//! and confirmed, the keyboard, and the assets' headers. Screenshots of each view go to
//! `target/test-artifacts/console/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them; or
//! `PGFERRY_CHROMIUM` / `PGFERRY_CHROMEDRIVER`); without them the browser tests say so and
//! return.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use pgferry_tests::{compare, Cluster, Pgferry};
use serde_json::json;

// ---- pgferry serve ----

fn serve(pf: &Pgferry) -> pgferry_tests::Served {
    let server = pf.serve(&[]);
    assert!(server.first_line.contains("/?token="), "{:?}", server.first_line);
    server
}

// ---- Chromium over WebDriver ----

fn program(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/lib/chromium")]) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// A headless Chromium session; chromedriver runs in a process group of its own, which the
/// drop ends whole (the browser included) even when a test fails.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test started.
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

/// Chromium and chromedriver, or `None` (and a message saying why the test skips).
async fn browser(test: &str) -> Option<Browser> {
    let (Some(chromium), Some(chromedriver)) = (program("PGFERRY_CHROMIUM", &["chromium", "chromium-browser"]), program("PGFERRY_CHROMEDRIVER", &["chromedriver"])) else {
        pgferry_tests::support::print_skipped(
            &format!("serve_console::{test}"),
            "chromium or chromedriver not found (Debian packages chromium and chromium-driver, which .ci/run installs; or PGFERRY_CHROMIUM / PGFERRY_CHROMEDRIVER)",
        );
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut driver = Command::new(&chromedriver);
    driver.arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut driver, 0);
    let driver = driver.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
    let profile = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--headless=new".to_string(),
        "--disable-gpu".to_string(),
        "--disable-dev-shm-usage".to_string(),
        "--no-first-run".to_string(),
        "--disable-background-networking".to_string(),
        "--disable-component-update".to_string(),
        "--disable-sync".to_string(),
        "--disable-quic".to_string(),
        "--window-size=1360,1000".to_string(),
        format!("--user-data-dir={}", profile.path().display()),
    ];
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        args.push("--no-sandbox".to_string());
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".to_string(), json!({"binary": chromium, "args": args}));
    let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
    builder.capabilities(caps);
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        match builder.connect(&format!("http://127.0.0.1:{port}")).await {
            Ok(client) => break client,
            Err(e) if Instant::now() > deadline => panic!("no WebDriver session from {} on port {port}: {e}", chromedriver.display()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    Some(Browser { client, driver, _profile: profile })
}

fn run<F: std::future::Future<Output = ()>>(test: F) {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(test);
}

fn artifacts() -> PathBuf {
    let dir = pgferry_tests::workspace_root().join("target").join("test-artifacts").join("console");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(c: &Client, name: &str) -> PathBuf {
    // The whole page, not only the window: the window grows to the document's height.
    let height = c.execute("return Math.max(document.documentElement.scrollHeight, 700)", vec![]).await.unwrap().as_u64().unwrap_or(1000);
    c.set_window_size(1360, (height as u32 + 140).min(4000)).await.unwrap();
    let png = c.screenshot().await.unwrap();
    let path = artifacts().join(name);
    std::fs::write(&path, png).unwrap();
    c.set_window_size(1360, 1000).await.unwrap();
    path
}

/// The text of the first element matching `css` (its textContent: hidden panels too), or "".
async fn text_of(c: &Client, css: &str) -> String {
    let v = c.execute("const e = document.querySelector(arguments[0]); return e ? e.textContent : ''", vec![json!(css)]).await.unwrap();
    v.as_str().unwrap_or("").to_string()
}

/// Waits until the text of `css` satisfies `done`; on a timeout, a screenshot and the page's
/// text in the panic message.
async fn wait_text(c: &Client, css: &str, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = text_of(c, css).await;
        if done(&text) {
            return text;
        }
        if Instant::now() > deadline {
            let shot = screenshot(c, &format!("timeout-{}.png", what.replace(|ch: char| !ch.is_ascii_alphanumeric(), "-"))).await;
            let page = text_of(c, "body").await;
            panic!("{what}: {css} never matched (last {text:?}); screenshot {}; page:\n{page}", shot.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).click().await.unwrap_or_else(|e| panic!("clicking {css}: {e}"));
}

async fn fill(c: &Client, css: &str, value: &str) {
    let e = c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

async fn choose(c: &Client, css: &str, value: &str) {
    // Some choices (the source types) arrive from the API after the form is drawn.
    let option = format!("{css} option[value='{value}']");
    c.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css(&option)).await.unwrap_or_else(|e| panic!("no option {value} in {css}: {e}"));
    c.find(Locator::Css(css)).await.unwrap().select_by_value(value).await.unwrap();
}

/// The id (or, without one, the text) of the focused element.
async fn focused(c: &Client) -> String {
    let v = c.execute("const e = document.activeElement; return e ? (e.id || e.textContent.trim()) : ''", vec![]).await.unwrap();
    v.as_str().unwrap_or("").to_string()
}

async fn press(c: &Client, key: Key) {
    c.active_element().await.unwrap().send_keys(&key.to_string()).await.unwrap();
}

struct Wizard<'a> {
    name: &'a str,
    source: &'a Cluster,
    target: &'a Cluster,
    databases: &'a str,
    mode: &'a str,
    source_password: &'a str,
    target_password: &'a str,
}

/// Walks the wizard from the "New migration" link to its Summary tab, with Next at each tab.
async fn fill_wizard(c: &Client, w: &Wizard<'_>) {
    click(c, "#nav-new").await;
    wait_text(c, "#tab-setup", "the wizard", Duration::from_secs(10), |t| t.contains("Setup")).await;
    fill(c, "#f-name", w.name).await;
    // Listed from the loaded adapters.
    wait_text(c, "#f-sourceType", "the source types", Duration::from_secs(20), |t| t.contains("(OnPremises)") && t.contains("(AWS_RDS)")).await;
    choose(c, "#f-sourceType", "OnPremises").await;
    choose(c, "#f-option", "ValidateAndMigrate").await;
    choose(c, "#f-mode", w.mode).await;
    click(c, "#next-setup").await;
    fill(c, "#f-srcHost", "127.0.0.1").await;
    fill(c, "#f-srcPort", &w.source.port().to_string()).await;
    fill(c, "#f-srcUser", "postgres").await;
    fill(c, "#f-srcPassword", w.source_password).await;
    choose(c, "#f-sslMode", "Prefer").await;
    // "Test connection" reaches the source and lists its databases with their sizes.
    click(c, "#test-connection").await;
    let result = wait_text(c, "#test-result", "the connection test", Duration::from_secs(30), |t| t.starts_with("Connected to") || t.starts_with("Cannot")).await;
    assert!(result.contains(&format!("127.0.0.1:{}", w.source.port())) && result.contains("PostgreSQL 15") && result.contains("TLS"), "{result}");
    click(c, "#next-source").await;
    fill(c, "#f-target", &format!("127.0.0.1:{}", w.target.port())).await;
    fill(c, "#f-tgtPassword", w.target_password).await;
    click(c, "#next-target").await;
    // Picked from the source's list (each with its size), which fills the names in.
    let listed = text_of(c, "#db-list").await;
    for db in w.databases.split(',') {
        assert!(listed.contains(&format!("{db} (")), "{db} is listed with its size: {listed}");
        click(c, &format!("#db-{db}")).await;
    }
    let picked = c.execute("return document.getElementById('f-dbs').value", vec![]).await.unwrap();
    assert_eq!(picked.as_str().map(|v| v.replace('\n', ",")), Some(w.databases.to_string()), "the boxes fill the names in");
    click(c, "#next-databases").await;
    assert_eq!(c.find(Locator::Css("#tab-summary")).await.unwrap().attr("aria-selected").await.unwrap().as_deref(), Some("true"));
}

async fn wait_state(c: &Client, what: &str, state: &str) -> String {
    wait_text(c, "#state", what, Duration::from_secs(240), |t| t.starts_with(state)).await
}

// ---- the tests ----

#[test]
fn the_wizard_runs_an_offline_migration_to_succeeded_in_the_grid() {
    run(async {
        let Some(browser) = browser("the_wizard_runs_an_offline_migration_to_succeeded_in_the_grid").await else { return };
        let c = &browser.client;
        let source = Cluster::start().unwrap();
        let target = Cluster::start().unwrap();
        source.create_database("app").unwrap();
        source
            .psql("app", "create table items (id int primary key, note text); insert into items select g, md5(g::text) from generate_series(1, 50000) g; create table tags (id serial primary key, tag text unique); insert into tags (tag) select 'tag' || g from generate_series(1, 300) g;")
            .unwrap();
        let pf = Pgferry::new();
        let server = serve(&pf);

        // The first load takes the token from the URL, keeps it in sessionStorage and takes
        // it out of the address bar.
        c.goto(&server.first_line).await.unwrap();
        wait_text(c, "#grid", "the empty grid", Duration::from_secs(10), |t| t.contains("No migrations yet")).await;
        let url = c.current_url().await.unwrap();
        assert!(!url.as_str().contains("token"), "the token left the address bar: {url}");
        let kept = c.execute("return sessionStorage.getItem('pgferry.token')", vec![]).await.unwrap();
        assert_eq!(kept.as_str(), server.first_line.split_once("?token=").map(|(_, t)| t));

        let w = Wizard { name: "web-offline", source: &source, target: &target, databases: "app", mode: "Offline", source_password: "pw-console-src-41d7", target_password: "pw-console-tgt-93be" };
        fill_wizard(c, &w).await;
        // The name was checked live against the target given.
        wait_text(c, "#name-check", "the name check", Duration::from_secs(10), |t| t.contains("\"web-offline\" is available")).await;
        click(c, "#tab-databases").await;
        let shot = screenshot(c, "wizard-databases.png").await;
        println!("screenshot {}", shot.display());
        click(c, "#tab-setup").await;
        let shot = screenshot(c, "wizard-setup.png").await;
        println!("screenshot {}", shot.display());
        click(c, "#tab-summary").await;
        let summary = text_of(c, "#summary-facts").await;
        for part in ["web-offline", "OnPremises", "ValidateAndMigrate", "Offline", &format!("127.0.0.1:{}@postgres", source.port()), &format!("127.0.0.1:{}", target.port()), "app", "given (sent to the runner only)"] {
            assert!(summary.contains(part), "the summary shows {part:?}: {summary}");
        }
        let shot = screenshot(c, "wizard-summary.png").await;
        println!("screenshot {}", shot.display());

        click(c, "#start").await;
        wait_text(c, "#details-name", "the details page", Duration::from_secs(60), |t| t == "web-offline").await;
        assert!(c.current_url().await.unwrap().as_str().ends_with("#/m/web-offline"));
        wait_state(c, "web-offline Succeeded", "Succeeded").await;
        let progress = wait_text(c, "#progress", "the progress", Duration::from_secs(10), |t| t.contains("app")).await;
        assert!(progress.contains("2 / 2") && progress.contains("50,300"), "tables and rows per database: {progress}");
        let tables = text_of(c, "#tables-app").await;
        assert!(tables.contains("public.items") && tables.contains("50,000") && tables.contains("public.tags"), "rows per table: {tables}");
        assert!(text_of(c, "#validation-server").await.contains("Instance"), "the validation per instance shows");
        assert!(text_of(c, "#validation-db-app").await.contains("Database app"), "and per database");
        assert!(text_of(c, "#verification").await.contains("app"), "the verification shows");
        c.execute("document.getElementById('tables-app').open = true", vec![]).await.unwrap();
        let shot = screenshot(c, "details-offline.png").await;
        println!("screenshot {}", shot.display());

        // The grid: the columns, the migration Succeeded, its name a link to its details.
        click(c, "#nav-grid").await;
        let grid = wait_text(c, "#migrations", "the grid", Duration::from_secs(10), |t| t.contains("web-offline") && t.contains("Succeeded")).await;
        let headers = c.execute("return [...document.querySelectorAll('#migrations thead th')].map(th => th.textContent + '|' + th.getAttribute('scope'))", vec![]).await.unwrap();
        let expected: Vec<String> = ["Name", "Status", "Migration mode", "Migration type", "Source server", "Source server type", "Databases", "Duration", "Start time"].iter().map(|h| format!("{h}|col")).collect();
        assert_eq!(headers, json!(expected));
        assert!(grid.contains("ValidateAndMigrate") && grid.contains("OnPremises") && grid.contains("Offline"), "{grid}");
        let shot = screenshot(c, "grid.png").await;
        println!("screenshot {}", shot.display());
        compare::assert_same(&source, &target, "app");

        // The same name again: the live check says it is taken, and Start shows the API's
        // problem+json detail.
        fill_wizard(c, &w).await;
        wait_text(c, "#name-check", "the name check", Duration::from_secs(10), |t| t.contains("is not available")).await;
        click(c, "#start").await;
        let error = wait_text(c, "#start-error", "the 409", Duration::from_secs(30), |t| !t.is_empty()).await;
        assert!(error.contains("already taken"), "the problem's detail shows: {error}");
        assert!(text_of(c, "#status").await.contains("already taken"), "and in the live status region");
        let shot = screenshot(c, "wizard-error.png").await;
        println!("screenshot {}", shot.display());

        // The passwords went to the runner only.
        for file in walk(&pf.dir().join("state")) {
            let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).to_string();
            assert!(!text.contains("pw-console-"), "a password is in {}", file.display());
        }
        drop(server);
    });
}

#[test]
fn a_validation_failure_shows_its_findings_on_the_details_page() {
    run(async {
        let Some(browser) = browser("a_validation_failure_shows_its_findings_on_the_details_page").await else { return };
        let c = &browser.client;
        // wal_level=replica: an online migration cannot start.
        let source = Cluster::builder().setting("wal_level", "replica").start().unwrap();
        let target = Cluster::start().unwrap();
        source.create_database("app").unwrap();
        source.psql("app", "create table items (id int primary key); insert into items select generate_series(1, 10);").unwrap();
        let pf = Pgferry::new();
        let server = serve(&pf);
        c.goto(&server.first_line).await.unwrap();
        let w = Wizard { name: "web-invalid", source: &source, target: &target, databases: "app", mode: "Online", source_password: "", target_password: "" };
        fill_wizard(c, &w).await;
        click(c, "#start").await;
        wait_text(c, "#details-name", "the details page", Duration::from_secs(60), |t| t == "web-invalid").await;
        wait_state(c, "web-invalid ValidationFailed", "ValidationFailed").await;
        let findings = wait_text(c, "#validation-server", "the findings", Duration::from_secs(10), |t| t.contains("wal-level-not-logical")).await;
        assert!(findings.contains("error"), "its severity: {findings}");
        assert!(findings.contains("ALTER SYSTEM SET wal_level = logical"), "its remediation: {findings}");
        assert!(text_of(c, "#validation-status").await.contains("Failed"));
        assert!(c.find(Locator::Css("#cutover")).await.is_err(), "no Cutover on an ended migration");
        assert!(c.find(Locator::Css("#cancel")).await.is_err(), "no Cancel either");
        let shot = screenshot(c, "details-validation-failed.png").await;
        println!("screenshot {}", shot.display());
        drop(server);
    });
}

#[test]
fn an_online_migration_is_cut_over_and_another_canceled_by_clicks() {
    run(async {
        let Some(browser) = browser("an_online_migration_is_cut_over_and_another_canceled_by_clicks").await else { return };
        let c = &browser.client;
        let source = Cluster::builder().setting("wal_level", "logical").setting("max_replication_slots", "10").setting("max_wal_senders", "10").start().unwrap();
        let target = Cluster::start().unwrap();
        for db in ["app", "shop"] {
            source.create_database(db).unwrap();
            source.psql(db, "create table items (id int primary key, note text); insert into items select g, md5(g::text) from generate_series(1, 2000) g;").unwrap();
        }
        let pf = Pgferry::new();
        let server = serve(&pf);
        c.goto(&server.first_line).await.unwrap();

        let w = Wizard { name: "web-online", source: &source, target: &target, databases: "app", mode: "Online", source_password: "", target_password: "" };
        fill_wizard(c, &w).await;
        click(c, "#start").await;
        wait_text(c, "#details-name", "the details page", Duration::from_secs(60), |t| t == "web-online").await;
        wait_text(c, "#substate", "web-online waiting for the cutover", Duration::from_secs(240), |t| t == "WaitingForCutoverTrigger").await;
        source.psql("app", "insert into items values (90001, 'after the copy'); update items set note = 'changed' where id = 7;").unwrap();
        let replication = wait_text(c, "#replication", "the replication counters", Duration::from_secs(60), |t| t.contains("app") && t.contains("streaming")).await;
        assert!(replication.contains(" s"), "the latency shows: {replication}");
        // The counters move with the change: 1 insert, 1 update (the cells after the latency).
        wait_text(c, "#replication tbody td:nth-of-type(2)", "the applied insert", Duration::from_secs(60), |t| t == "1").await;
        wait_text(c, "#replication tbody td:nth-of-type(3)", "the applied update", Duration::from_secs(60), |t| t == "1").await;
        assert!(text_of(c, "#runner").await.starts_with("alive"), "a runner works on it");
        let shot = screenshot(c, "details-online-waiting.png").await;
        println!("screenshot {}", shot.display());

        click(c, "#cutover").await;
        let question = c.get_alert_text().await.unwrap();
        assert!(question.contains("Cut over migration web-online") && question.contains("latency") && question.contains("app:"), "the confirm shows the latency: {question}");
        c.accept_alert().await.unwrap();
        wait_state(c, "web-online Succeeded", "Succeeded").await;
        let receipt = wait_text(c, "#cutover-receipt", "the cutover receipt", Duration::from_secs(10), |t| t.contains("Requested")).await;
        assert!(receipt.contains("Fence") && receipt.contains("Verified"), "the receipt: {receipt}");
        let shot = screenshot(c, "details-online-cutover.png").await;
        println!("screenshot {}", shot.display());
        compare::assert_same(&source, &target, "app");

        let w = Wizard { name: "web-dropped", databases: "shop", ..w };
        fill_wizard(c, &w).await;
        click(c, "#start").await;
        wait_text(c, "#details-name", "the details page", Duration::from_secs(60), |t| t == "web-dropped").await;
        wait_text(c, "#substate", "web-dropped waiting for the cutover", Duration::from_secs(240), |t| t == "WaitingForCutoverTrigger").await;
        // Its runner killed: the page says so, with the command that goes on (the lease is
        // seen at once, or at its expiry).
        let runner = text_of(c, "#runner").await;
        let pid: i32 = runner.strip_prefix("alive: process ").and_then(|r| r.split_whitespace().next()).and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{runner}"));
        // SAFETY: kill(2) of the runner process this test's server started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        wait_text(c, "#runner", "runner not alive", Duration::from_secs(60), |t| t == "runner not alive").await;
        let next = text_of(c, "#next").await;
        assert!(next.contains("pgferry") && next.contains("resume") && next.contains("web-dropped"), "the next command: {next}");
        let shot = screenshot(c, "details-runner-not-alive.png").await;
        println!("screenshot {}", shot.display());
        // A refused confirm does nothing.
        click(c, "#cancel").await;
        c.dismiss_alert().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(text_of(c, "#substate").await, "WaitingForCutoverTrigger");
        click(c, "#cancel").await;
        let question = c.get_alert_text().await.unwrap();
        assert!(question.contains("Cancel migration web-dropped") && question.contains("dropped: shop"), "the confirm names what is dropped: {question}");
        c.accept_alert().await.unwrap();
        wait_state(c, "web-dropped Canceled", "Canceled").await;
        let shot = screenshot(c, "details-canceled.png").await;
        println!("screenshot {}", shot.display());
        let dbs = target.psql("postgres", "select count(*) from pg_database where datname = 'shop'").unwrap();
        assert_eq!(dbs.trim(), "0", "the target database went with the cancel");

        click(c, "#nav-grid").await;
        wait_text(c, "#migrations", "the grid", Duration::from_secs(10), |t| t.contains("web-dropped") && t.contains("Canceled")).await;
        let names = c.execute("return [...document.querySelectorAll('#migrations tbody th')].map(th => th.textContent)", vec![]).await.unwrap();
        assert_eq!(names, json!(["web-dropped", "web-online"]), "newest first");
        let shot = screenshot(c, "grid-online.png").await;
        println!("screenshot {}", shot.display());
        drop(server);
    });
}

#[test]
fn the_console_is_keyboard_usable() {
    run(async {
        let Some(browser) = browser("the_console_is_keyboard_usable").await else { return };
        let c = &browser.client;
        let pf = Pgferry::new();
        let server = serve(&pf);
        c.goto(&server.first_line).await.unwrap();
        wait_text(c, "#grid", "the grid", Duration::from_secs(10), |t| t.contains("No migrations yet")).await;

        // Tab from the top of the page reaches the navigation and the grid's buttons, and
        // what has the focus shows it (:focus-visible outline).
        let mut reached = Vec::new();
        for _ in 0..8 {
            c.execute("if (!document.activeElement || document.activeElement === document.body) document.querySelector('.skip').focus()", vec![]).await.unwrap();
            press(c, Key::Tab).await;
            reached.push(focused(c).await);
            if reached.last().is_some_and(|f| f == "refresh") {
                break;
            }
        }
        assert!(reached.contains(&"nav-new".to_string()) && reached.contains(&"refresh".to_string()), "Tab reaches the links and buttons: {reached:?}");
        let outline = c.execute("return getComputedStyle(document.activeElement).outlineStyle", vec![]).await.unwrap();
        assert_ne!(outline, json!("none"), "the focus is visible");
        press(c, Key::Enter).await;
        wait_text(c, "#status", "the refresh", Duration::from_secs(10), |t| t.contains("Refreshed")).await;

        // The wizard's tablist: arrows move between the tabs (wrapping), Home and End jump.
        click(c, "#nav-new").await;
        wait_text(c, "#tab-setup", "the wizard", Duration::from_secs(10), |t| t.contains("Setup")).await;
        c.execute("document.getElementById('tab-setup').focus()", vec![]).await.unwrap();
        let selected = || async move {
            let v = c.execute("return [document.activeElement.id, document.querySelector('[role=tab][aria-selected=true]').id, [...document.querySelectorAll('[role=tabpanel]')].filter(p => !p.hidden).map(p => p.id).join()]", vec![]).await.unwrap();
            (v[0].as_str().unwrap().to_string(), v[1].as_str().unwrap().to_string(), v[2].as_str().unwrap().to_string())
        };
        press(c, Key::Right).await;
        assert_eq!(selected().await, ("tab-source".into(), "tab-source".into(), "panel-source".into()));
        press(c, Key::Right).await;
        assert_eq!(selected().await.1, "tab-target");
        press(c, Key::Left).await;
        assert_eq!(selected().await.1, "tab-source");
        press(c, Key::End).await;
        assert_eq!(selected().await, ("tab-summary".into(), "tab-summary".into(), "panel-summary".into()));
        press(c, Key::Right).await;
        assert_eq!(selected().await.1, "tab-setup", "wraps around");
        press(c, Key::Left).await;
        assert_eq!(selected().await.1, "tab-summary");
        press(c, Key::Home).await;
        assert_eq!(selected().await.1, "tab-setup");
        // Only the selected tab is in the Tab order; Tab goes on into its panel's fields.
        let tabindexes = c.execute("return [...document.querySelectorAll('[role=tab]')].map(t => t.tabIndex)", vec![]).await.unwrap();
        assert_eq!(tabindexes, json!([0, -1, -1, -1, -1]));
        let mut reached = Vec::new();
        for _ in 0..12 {
            press(c, Key::Tab).await;
            reached.push(focused(c).await);
            if reached.last().is_some_and(|f| f == "next-setup") {
                break;
            }
        }
        assert!(reached.contains(&"f-name".to_string()) && reached.contains(&"next-setup".to_string()), "Tab reaches the fields and Next: {reached:?}");
        // Every field has a label.
        let unlabelled = c.execute("return [...document.querySelectorAll('input, select, textarea')].filter(e => !e.labels || e.labels.length === 0).map(e => e.id)", vec![]).await.unwrap();
        assert_eq!(unlabelled, json!([]), "fields without a <label for>");
        // Enter on Next moves to the next tab, as a click does.
        press(c, Key::Enter).await;
        assert_eq!(selected().await.1, "tab-source");
        let shot = screenshot(c, "wizard-keyboard.png").await;
        println!("screenshot {}", shot.display());
        drop(server);
    });
}

#[test]
fn the_assets_need_no_token_and_carry_a_strict_csp_while_the_api_still_does() {
    let pf = Pgferry::new();
    let server = serve(&pf);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let inline_handler = regex::Regex::new(r"\son[a-z]+=").unwrap();
    for (path, content_type) in [("/", "text/html"), ("/console/app.js", "text/javascript"), ("/console/app.css", "text/css"), ("/console/icon.svg", "image/svg+xml")] {
        let mut r = agent.get(&format!("{}{path}", server.base)).call().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path} is served without the token");
        let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert!(header("content-type").starts_with(content_type), "{path}: {}", header("content-type"));
        let csp = header("content-security-policy");
        assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(header("x-content-type-options"), "nosniff");
        assert_eq!(header("referrer-policy"), "no-referrer", "the ?token= of a first load is sent nowhere");
        let body = r.body_mut().read_to_string().unwrap();
        if path == "/" {
            // No inline script: every <script> has a src, and no on…= attribute.
            for tag in body.split("<script").skip(1) {
                assert!(tag.split('>').next().unwrap().contains("src="), "an inline script: <script{tag}");
            }
            assert!(!inline_handler.is_match(&body), "an inline handler in {body}");
            assert!(!body.contains("http://") && !body.contains("https://"), "nothing from elsewhere");
        }
        if path == "/console/app.js" {
            assert!(body.starts_with("// pgferry console") && body.to_lowercase().contains("no framework"), "the module says what it is");
            assert!(!body.contains(".innerHTML") && !body.contains("insertAdjacentHTML"), "text only, never markup");
        }
    }
    // The API still needs the token, and the assets' routes do not open anything else.
    for path in ["/api/v1/migrations", "/api/v1/openapi.json", "/console/../api/v1/migrations", "/nothing"] {
        let r = agent.get(&format!("{}{path}", server.base)).call().unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
    }
    drop(server);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}
