//! The `pgferry` command line: parses arguments, calls the library, maps results to output
//! and exit codes (documented in README.md).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use pgferry::lifecycle::State;
use pgferry::migration::{self, CopyOptions, CreateRequest};
use pgferry::plugin_host::manifest::{self, Given};
use pgferry::plugin_host::{contract, Grants, Limits, Origin, PluginHost, World};
use pgferry::plugins::{self, Registry};
use pgferry::properties::{MigrationMode, MigrationOption, Properties};
use pgferry::report;
use pgferry::store::{self, Store};

#[derive(Parser)]
#[command(name = "pgferry", version, about = "Migrate PostgreSQL databases between servers, validated by sandboxed plugins")]
struct Cli {
    /// Where the state store lives [default: $PGFERRY_STATE_DIR or ~/.local/state/pgferry]
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// A PostgreSQL control database to keep the state store in, shared by every runner,
    /// worker and server given it (postgres://user@host:port/dbname; the password from
    /// ~/.pgpass or PGPASSWORD) [default: the embedded store in the state directory]
    #[arg(long, global = true, env = "PGFERRY_STORE", hide_env_values = true, value_name = "URI")]
    store: Option<String>,
    /// Plugin configuration (TOML) [default: $PGFERRY_PLUGINS or ~/.config/pgferry/plugins.toml]
    #[arg(long, global = true, value_name = "FILE")]
    plugins: Option<PathBuf>,
    /// Development only: load this plugin file too, unpinned, with no grants or settings
    /// (repeatable; warned about on stderr every run; refused by `pgferry serve`)
    #[arg(long, global = true, value_name = "PATH")]
    plugin_dev: Vec<PathBuf>,
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create, follow and control migrations
    #[command(subcommand)]
    Migration(MigrationCommand),
    /// Inspect and test the plugins this runner uses; make and build your own
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// What pgferry knows of the servers (the inventory plugins see)
    #[command(subcommand)]
    Inventory(InventoryCommand),
    /// Serve the HTTP API over the state store; the first line printed is its URL, with the
    /// access token when one was just made
    Serve(ServeArgs),
    /// Run the migrations queued in a shared store (`--store postgres://…`), and resume
    /// those whose runner died, on this host; start one on as many hosts as you like
    Worker(WorkerArgs),
}

#[derive(Args)]
struct WorkerArgs {
    /// Migrations this worker runs at once
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Seconds between looks for work while idle
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    poll_interval: f64,
    /// Exit once no migration is waiting (instead of waiting for more)
    #[arg(long)]
    until_idle: bool,
    #[command(flatten)]
    copy: CopyArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (loopback by default; another address needs TLS or --insecure)
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// TLS certificate chain (PEM), to serve HTTPS
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Plain HTTP on a non-loopback address, when something else (a TLS proxy, a private
    /// network) protects it
    #[arg(long)]
    insecure: bool,
    #[command(subcommand)]
    action: Option<ServeAction>,
}

#[derive(Subcommand)]
enum ServeAction {
    /// Make a new access token and print it; the old one stops working at once
    RotateToken,
}

#[derive(Subcommand)]
enum MigrationCommand {
    /// Validate and migrate the databases a properties file names
    Create(CreateArgs),
    /// The migrations in the state store, newest first
    List {
        #[arg(long, value_enum, default_value_t = Filter::All)]
        filter: Filter,
    },
    /// One migration: status, validation results, errors
    Show {
        /// The migration's name
        #[arg(long)]
        migration_name: String,
        /// Target server (host:port) when several targets have a migration of that name
        #[arg(long)]
        target: Option<String>,
    },
    /// Trigger the cutover of an online migration, or cancel a migration
    Update {
        /// The migration's name
        #[arg(long)]
        migration_name: String,
        /// Target server (host:port) when several targets have a migration of that name
        #[arg(long)]
        target: Option<String>,
        /// Online migrations in WaitingForCutoverTrigger: apply what the source committed
        /// until now, stop replicating, verify, and end Succeeded
        #[arg(long, conflicts_with = "cancel", required_unless_present = "cancel")]
        cutover: bool,
        /// With --cutover: make the source databases read-only for applications before the
        /// fence (default_transaction_read_only, and their open sessions ended)
        #[arg(long, requires = "cutover")]
        read_only_source: bool,
        /// With --cutover: return once the request is recorded, without following it
        #[arg(long, requires = "cutover")]
        no_wait: bool,
        /// The properties file again, for the passwords, when a cancel must clean up after
        /// a runner that is gone (else PGFERRY_SOURCE_PASSWORD / PGFERRY_TARGET_PASSWORD,
        /// PGPASSWORD, ~/.pgpass)
        #[arg(long, value_name = "FILE")]
        properties: Option<PathBuf>,
        /// Stop the migration and remove what it made on both servers (target databases it
        /// created, replication slots, publications, origins); also cleans up after a Failed one
        #[arg(long)]
        cancel: bool,
    },
    /// Continue a migration whose runner is gone (killed, Ctrl-C) or that failed: finished
    /// work is kept
    Resume {
        /// The migration's name
        #[arg(long)]
        migration_name: String,
        /// Target server (host:port) when several targets have a migration of that name
        #[arg(long)]
        target: Option<String>,
        /// The properties file again, for its passwords (the state store never keeps them)
        #[arg(long, value_name = "FILE")]
        properties: Option<PathBuf>,
        #[command(flatten)]
        copy: CopyArgs,
    },
    /// Whether a migration name is free on a target server
    CheckNameAvailability {
        /// The name to check
        #[arg(long)]
        migration_name: String,
        /// Target server (host:port or a postgres URI)
        #[arg(long)]
        target: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Filter {
    #[value(name = "Active")]
    Active,
    #[value(name = "All")]
    All,
}

#[derive(Args)]
struct CreateArgs {
    /// Letters, digits and hyphens, unique per target server
    #[arg(long)]
    migration_name: String,
    /// The body `az postgres flexible-server migration create --properties` takes
    #[arg(long, value_name = "FILE")]
    properties: PathBuf,
    /// Target server: host:port or a postgres URI
    #[arg(long)]
    target: Option<String>,
    #[arg(long, value_enum)]
    migration_option: Option<MigrationOption>,
    #[arg(long, value_enum)]
    migration_mode: Option<ModeArg>,
    /// Return once the migration is recorded; a detached runner carries it on
    /// (follow it with `show`, its log is in the state directory under logs/)
    #[arg(long)]
    no_wait: bool,
    /// Record the migration for a `pgferry worker` to run (with the worker's credentials:
    /// the store keeps no password) and return
    #[arg(long, conflicts_with = "no_wait")]
    queue: bool,
    #[command(flatten)]
    copy: CopyArgs,
}

#[derive(Args)]
struct CopyArgs {
    /// Parallel copy workers, at least 1 [default: the number of cores]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    /// Index and key builds at once, each table's as soon as its data is copied, while
    /// other tables still copy [default: as --jobs]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    index_jobs: Option<u16>,
    /// Copy tables bigger than this many bytes in parts, by several workers (0: never)
    #[arg(long, value_name = "BYTES", default_value_t = 512 << 20)]
    split_tables_larger_than: u64,
    /// Directory of pg_dump/pg_restore, when the right version is not found on its own
    #[arg(long, value_name = "DIR")]
    pg_bin: Option<PathBuf>,
    /// How long to keep reconnecting to a source or target that went away (one outage, while
    /// copying, streaming or cutting over) before the migration fails
    #[arg(long, value_name = "SECONDS", default_value_t = pgferry::reconnect::DEFAULT_TIMEOUT.as_secs())]
    reconnect_timeout: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    #[value(name = "Offline")]
    Offline,
    #[value(name = "Online")]
    Online,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Built-in and configured plugins with their contract, kind and ids
    List,
    /// What a component file is: world, contract version, imports, exports, sha256
    Inspect { file: PathBuf },
    /// Run one plugin (a rule set's applicable rules, or an adapter's readiness) against an
    /// inventory dump or the live servers a properties file names, and print its findings
    Test {
        /// The component (.wasm)
        file: PathBuf,
        /// An inventory dump (`pgferry inventory dump`, or an SDK fixture as JSON)
        #[arg(long, value_name = "FILE", required_unless_present_any = ["properties", "source"], conflicts_with_all = ["properties", "source"])]
        inventory: Option<PathBuf>,
        /// A properties file: the inventory is collected from the servers it names
        #[arg(long, value_name = "FILE", conflicts_with = "source")]
        properties: Option<PathBuf>,
        /// A live source server (host:port@user or a postgres URI; the password from
        /// PGPASSWORD or ~/.pgpass), with --target: the inventory is collected from both
        #[arg(long, value_name = "URI", requires = "target")]
        source: Option<String>,
        /// With --source: a database the database-level checks run on (repeatable)
        #[arg(long = "database", value_name = "NAME", requires = "source")]
        databases: Vec<String>,
        /// With --properties or --source: the target server (host:port or a postgres URI)
        #[arg(long)]
        target: Option<String>,
        /// The migration mode the checks see
        #[arg(long, value_enum, default_value_t = ModeArg::Offline)]
        migration_mode: ModeArg,
        /// The source type the checks see [default: the properties' sourceType, else OnPremises]
        #[arg(long)]
        source_type: Option<String>,
        /// A setting for the plugin (repeatable)
        #[arg(long = "setting", value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
    /// Write a new plugin project (its own copy of the SDK and the contract, a starter
    /// plugin, native tests and a README) that builds outside this repository
    New {
        #[arg(value_enum)]
        kind: KindArg,
        /// The plugin's name: lowercase letters, digits and hyphens
        name: String,
        /// The plugin's language (Python plugins build with componentize-py)
        #[arg(long, value_enum, default_value_t = LangArg::Rust)]
        lang: LangArg,
        /// Where to write it [default: ./NAME]
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Build a plugin project reproducibly into DIR/dist/NAME.wasm, check that this runner
    /// loads it, and print its pinned [[plugin]] block for the plugin configuration
    Build {
        /// The project's directory
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    /// A validation rule set (world validation-rule)
    Rule,
    /// A source adapter (world source-adapter)
    Adapter,
}

#[derive(Clone, Copy, ValueEnum)]
enum LangArg {
    Rust,
    Python,
}

#[derive(Subcommand)]
enum InventoryCommand {
    /// Collect the inventory of the servers a properties file names (its DBsToMigrate), as
    /// the JSON the SDK's test Fixture loads (`Fixture::from_json`)
    Dump {
        #[arg(long, value_name = "FILE")]
        properties: PathBuf,
        /// Target server: host:port or a postgres URI
        #[arg(long)]
        target: Option<String>,
    },
}

/// Exit codes (README.md documents them).
#[repr(u8)]
enum Exit {
    Ok = 0,
    Error = 1,
    NotFound = 3,
    ValidationFailed = 4,
    Failed = 5,
    Canceled = 6,
    /// A cancel could not remove everything yet: the migration stays Canceling.
    Canceling = 7,
    /// Interrupted (Ctrl-C): the migration is left to `resume` or `update --cancel`.
    Interrupted = 130,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The replication crate's TLS stack links a second rustls crypto provider; without a
    // process default, the first config built without an explicit provider would panic.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGFERRY_LOG")
                .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code as u8),
        Err(error) => {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "Error: {error}");
            for cause in error.chain().skip(1) {
                let _ = writeln!(stderr, "Caused by: {cause}");
            }
            let code = if error.is::<migration::NotFound>() {
                Exit::NotFound
            } else if error.is::<Interrupted>() {
                Exit::Interrupted
            } else {
                Exit::Error
            };
            ExitCode::from(code as u8)
        }
    }
}

async fn serve(cli: &Cli, args: &ServeArgs) -> Result<Exit> {
    if let Some(file) = cli.plugin_dev.first() {
        bail!(
            "`pgferry serve` refuses --plugin-dev ({}): a server runs only pinned plugins. Pin it in a plugins.toml (path and sha256) and pass that with --plugins, or try it with `pgferry plugin test` or `pgferry migration create --plugin-dev`",
            file.display()
        );
    }
    let state_dir = state_dir(cli)?;
    let location = store_location(cli)?;
    if let Some(ServeAction::RotateToken) = args.action {
        let mut store = Store::open_at(&location)?;
        let token = pgferry::serve::token::rotate(&mut store)?;
        print(&format!("{token}\n"));
        eprintln!("the old access token stops working now (a running `pgferry serve` included); only the new one's hash is stored: keep it");
        return Ok(Exit::Ok);
    }
    let config = pgferry::serve::Config {
        listen: args.listen,
        state_dir,
        store: location,
        plugins: cli.plugins.clone(),
        tls: args.tls_cert.clone().zip(args.tls_key.clone()),
        insecure: args.insecure,
    };
    pgferry::serve::run(config, |url, token| {
        print(&format!("{url}\n"));
        match token {
            Some(_) => eprintln!("the API is under {}api/v1/ (OpenAPI at api/v1/openapi.json); the token in the URL is shown this once, as only its hash is stored: keep it, or make a new one with `pgferry serve rotate-token`", url.split('?').next().unwrap_or(url)),
            None => eprintln!("the API is under {url}api/v1/; use the access token shown when it was made, or make a new one with `pgferry serve rotate-token`"),
        }
    })
    .await?;
    Ok(Exit::Ok)
}

async fn worker(cli: &Cli, args: &WorkerArgs) -> Result<Exit> {
    let location = store_location(cli)?;
    let registry = registry(cli).await?;
    let options = pgferry::worker::Options {
        concurrency: args.concurrency.into(),
        poll: std::time::Duration::from_secs_f64(args.poll_interval.max(0.05)),
        until_idle: args.until_idle,
        // No progress bars: a worker's output is a log.
        copy: Box::new(|| CopyOptions { observer: None, ..args.copy.options(cli) }),
    };
    eprintln!("worker {} takes migrations from {}", store::Holder::this_process().id, location.describe());
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    pgferry::worker::run(&location, &registry, &options, stop).await?;
    Ok(Exit::Ok)
}

fn print(text: &str) {
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn print_json(value: &serde_json::Value) {
    print(&format!("{}\n", serde_json::to_string_pretty(value).expect("JSON")));
}

fn open_store(cli: &Cli) -> Result<Store> {
    Store::open_at(&store_location(cli)?)
}

/// `--store`, else the embedded store in the state directory.
fn store_location(cli: &Cli) -> Result<store::Location> {
    match &cli.store {
        Some(uri) => store::Location::parse(uri),
        None => Ok(store::Location::Dir(state_dir(cli)?)),
    }
}

async fn registry(cli: &Cli) -> Result<Registry> {
    let config = cli.plugins.clone().or_else(plugins::default_config_file);
    Registry::load(config.as_deref(), &cli.plugin_dev, plugins::default_cache_dir()).await
}

async fn run(cli: Cli) -> Result<Exit> {
    match &cli.command {
        Command::Migration(cmd) => match cmd {
            MigrationCommand::Create(args) => create(&cli, args).await,
            MigrationCommand::List { filter } => {
                let store = open_store(&cli)?;
                let list = store.list(matches!(filter, Filter::Active))?;
                match cli.output {
                    Output::Json => print_json(&report::list_json(&list)),
                    Output::Table => print(&report::list_text(&list)),
                }
                Ok(Exit::Ok)
            }
            MigrationCommand::Show { migration_name, target } => {
                let store = open_store(&cli)?;
                let Some(m) = store.find(migration_name, target.as_deref())? else {
                    eprintln!("Error: no migration named {migration_name:?} in the state store {}", store.describe());
                    return Ok(Exit::NotFound);
                };
                show(&cli, &store, &m)?;
                Ok(Exit::Ok)
            }
            MigrationCommand::Update { migration_name, target, cutover, read_only_source, no_wait, properties, cancel } => {
                let mut store = open_store(&cli)?;
                let Some(m) = store.find(migration_name, target.as_deref())? else {
                    eprintln!("Error: no migration named {migration_name:?} in the state store {}", store.describe());
                    return Ok(Exit::NotFound);
                };
                if *cutover {
                    migration::request_cutover(&mut store, &m, *read_only_source)?;
                    // The migration's runner (another process) carries the cutover out; this
                    // command follows it to the end, so that its exit code is the outcome.
                    let m = loop {
                        let m = store.get_by_id(m.id)?;
                        if !m.status.is_active() || *no_wait {
                            break m;
                        }
                        if !migration::runner_alive(&store, &m)? {
                            bail!(
                                "the cutover of migration {migration_name:?} is recorded, but its runner stopped before carrying it out; `{}` carries it out",
                                migration::resume_command(&m)
                            );
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    };
                    return if *no_wait {
                        show(&cli, &store, &m)?;
                        Ok(Exit::Ok)
                    } else {
                        finish(&cli, &store, &m)
                    };
                }
                debug_assert!(*cancel);
                let secrets = properties.as_ref().map(|p| Properties::from_file(p)).transpose()?;
                let registry = registry(&cli).await?;
                let m = migration::cancel(&mut store, &registry, &m, secrets).await?;
                // Canceled is what was asked for: success.
                Ok(match finish(&cli, &store, &m)? {
                    Exit::Canceled => Exit::Ok,
                    other => other,
                })
            }
            MigrationCommand::Resume { migration_name, target, properties, copy } => {
                resume(&cli, migration_name, target.as_deref(), properties.as_ref(), copy).await
            }
            MigrationCommand::CheckNameAvailability { migration_name, target } => {
                let store = open_store(&cli)?;
                let availability = migration::name_availability(&store, migration_name, target)?;
                let server = &availability.target_server;
                match cli.output {
                    Output::Json => print_json(&availability.json()),
                    Output::Table => print(&match &availability.reason {
                        None => format!("{migration_name:?} is available on {server}\n"),
                        Some(r) => format!("{migration_name:?} is not available on {server}: {r}\n"),
                    }),
                }
                Ok(if availability.reason.is_none() { Exit::Ok } else { Exit::Error })
            }
        },
        Command::Serve(args) => serve(&cli, args).await,
        Command::Worker(args) => worker(&cli, args).await,
        Command::Plugin(PluginCommand::List) => plugin_list(&cli).await,
        Command::Plugin(PluginCommand::Inspect { file }) => plugin_inspect(&cli, file).await,
        Command::Plugin(PluginCommand::Test { file, inventory, properties, source, databases, target, migration_mode, source_type, settings }) => {
            let live = match (properties, source) {
                (Some(path), _) => Some(Properties::from_file(path)?),
                (None, Some(uri)) => {
                    let body = serde_json::json!({ "properties": {
                        "SourceDBServerResourceId": uri,
                        "DBsToMigrate": databases,
                        "sourceType": source_type.as_deref().unwrap_or("OnPremises"),
                    } });
                    Some(Properties::parse(&body.to_string()).context("--source")?)
                }
                (None, None) => None,
            };
            plugin_test(&cli, file, inventory.as_deref(), live, target.as_deref(), *migration_mode, source_type.as_deref(), settings).await
        }
        Command::Plugin(PluginCommand::New { kind, name, lang, dir }) => plugin_new(&cli, *kind, name, *lang, dir.as_deref()),
        Command::Plugin(PluginCommand::Build { dir }) => plugin_build(&cli, dir).await,
        Command::Inventory(InventoryCommand::Dump { properties, target }) => {
            let props = Properties::from_file(properties)?;
            let inventory = migration::live_inventory(&registry(&cli).await?, &props, target.as_deref()).await?;
            print_json(&inventory.to_fixture_json());
            Ok(Exit::Ok)
        }
    }
}

fn show(cli: &Cli, store: &Store, m: &store::Migration) -> Result<()> {
    match cli.output {
        Output::Json => print_json(&report::show_document_of(store, m)?),
        Output::Table => print(&report::show_text_of(store, m)?),
    }
    Ok(())
}

fn state_dir(cli: &Cli) -> Result<PathBuf> {
    match &cli.state_dir {
        Some(d) => Ok(d.clone()),
        None => store::default_state_dir(),
    }
}

/// `--no-wait`: the same command without the flag, in a detached process of its own
/// session (it survives the shell), logging to the state directory; this one returns as
/// soon as the migration is recorded.
async fn create_detached(cli: &Cli, args: &CreateArgs) -> Result<Exit> {
    use pgferry::detached::{self, Launch, Started};
    let state_dir = state_dir(cli)?;
    let location = store_location(cli)?;
    Store::open_at(&location)?;
    let exe = std::env::current_exe()?;
    let args_rest = std::env::args_os().skip(1).filter(|a| a != "--no-wait").collect();
    let mut runner = detached::start(Launch { exe: &exe, state_dir: &state_dir, store: &location, name: &args.migration_name, args: args_rest, stdin: None, env: vec![] })?;
    match detached::wait_started(&location, &args.migration_name, None, &mut runner).await? {
        Started::Running(m) => {
            show(cli, &Store::open_at(&location)?, &m)?;
            eprintln!("running in the background as process {} (log: {})", runner.child.id(), runner.log.display());
            Ok(Exit::Ok)
        }
        Started::Ended { success, output } => {
            // It stopped before taking the migration on: bad input. Say what it said.
            eprint!("{output}");
            Ok(if success { Exit::Ok } else { Exit::Error })
        }
    }
}

async fn create(cli: &Cli, args: &CreateArgs) -> Result<Exit> {
    if args.no_wait {
        if args.properties.as_os_str() == "-" {
            bail!("--properties - (standard input) cannot be combined with --no-wait: give a file");
        }
        return create_detached(cli, args).await;
    }
    // `-`: the body on standard input (how `serve` hands it over, passwords included).
    let from_stdin = args.properties.as_os_str() == "-";
    let properties = if from_stdin {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading the properties from standard input")?;
        Properties::parse(&text).context("the properties on standard input")?
    } else {
        Properties::from_file(&args.properties)?
    };
    for warning in &properties.warnings {
        eprintln!("warning: properties {}: {warning}", args.properties.display());
    }
    let registry = registry(cli).await?;
    let mut store = open_store(cli)?;
    let request = CreateRequest {
        name: args.migration_name.clone(),
        properties,
        properties_file: (!from_stdin).then(|| std::path::absolute(&args.properties).unwrap_or_else(|_| args.properties.clone())),
        target: args.target.clone(),
        option: args.migration_option,
        mode: args.migration_mode.map(|m| match m {
            ModeArg::Offline => MigrationMode::Offline,
            ModeArg::Online => MigrationMode::Online,
        }),
        copy: args.copy.options(cli),
        queue: args.queue,
    };
    if args.queue {
        let m = migration::create(&mut store, &registry, request).await?;
        show(cli, &store, &m)?;
        eprintln!("queued: a `pgferry worker` given this store runs it, with its own credentials (PGFERRY_SOURCE_PASSWORD / PGFERRY_TARGET_PASSWORD, PGPASSWORD, ~/.pgpass)");
        return Ok(Exit::Ok);
    }
    let name = args.migration_name.clone();
    let reader = store.reopen()?;
    let m = interruptible(reader, &name, migration::create(&mut store, &registry, request)).await?;
    finish(cli, &store, &m)
}

/// Runs a migration's work until it ends or Ctrl-C: the work is then dropped (which stops
/// its workers and child processes, and releases the runner's lease), and the message
/// says how to go on.
async fn interruptible(reader: Store, name: &str, work: impl std::future::Future<Output = Result<store::Migration>>) -> Result<store::Migration> {
    tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => {
            let hint = match reader.find(name, None).ok().flatten() {
                Some(m) if m.status.is_active() => format!(
                    "migration {name:?} is left {} with no runner; `{}` carries it on, `{}` stops it and cleans up",
                    m.status,
                    migration::resume_command(&m),
                    migration::cancel_command(&m)
                ),
                _ => format!("migration {name:?} was not recorded"),
            };
            Err(Interrupted(hint).into())
        }
    }
}

/// Ctrl-C (exit code 130).
#[derive(Debug, thiserror::Error)]
#[error("interrupted: {0}")]
struct Interrupted(String);

impl CopyArgs {
    fn options(&self, cli: &Cli) -> CopyOptions {
        let jobs = self.jobs.map(usize::from).unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
        CopyOptions {
            jobs,
            index_jobs: self.index_jobs.map_or(jobs, usize::from),
            pg_bin: self.pg_bin.clone(),
            split_bytes: self.split_tables_larger_than,
            reconnect_timeout: std::time::Duration::from_secs(self.reconnect_timeout),
            observer: Some(pgferry::progress_view::View::choose(cli.output == Output::Json).observer()),
        }
    }
}

async fn resume(cli: &Cli, name: &str, target: Option<&str>, properties: Option<&PathBuf>, copy: &CopyArgs) -> Result<Exit> {
    let secrets = properties.map(|p| Properties::from_file(p)).transpose()?;
    let registry = registry(cli).await?;
    let mut store = open_store(cli)?;
    let reader = store.reopen()?;
    let m = interruptible(reader, name, migration::resume(&mut store, &registry, name, target, secrets, copy.options(cli))).await?;
    finish(cli, &store, &m)
}

/// Shows the migration's end state and maps it to the exit code.
fn finish(cli: &Cli, store: &Store, m: &store::Migration) -> Result<Exit> {
    show(cli, store, m)?;
    Ok(match m.status.state {
        State::Succeeded => Exit::Ok,
        State::ValidationFailed => Exit::ValidationFailed,
        State::Canceled => Exit::Canceled,
        State::Canceling => {
            eprintln!("Error: migration {:?} is still Canceling: what is listed under Leftovers is still on the servers; `{}` tries again", m.name, migration::cancel_command(m));
            Exit::Canceling
        }
        _ => Exit::Failed,
    })
}

async fn plugin_list(cli: &Cli) -> Result<Exit> {
    let registry = registry(cli).await?;
    let mut rows = Vec::new();
    for a in &registry.adapters {
        rows.push(serde_json::json!({
            "name": a.plugin.name, "origin": a.plugin.origin, "world": "source-adapter",
            "contract": a.plugin.shape.contract.to_string(), "sha256": a.plugin.sha256,
            "version": a.plugin.manifest.as_ref().map(|m| &m.version),
            "ids": a.description.info.ids, "displayName": a.description.info.display_name,
        }));
    }
    for r in &registry.rules {
        rows.push(serde_json::json!({
            "name": r.plugin.name, "origin": r.plugin.origin, "world": "validation-rule",
            "contract": r.plugin.shape.contract.to_string(), "sha256": r.plugin.sha256,
            "version": r.plugin.manifest.as_ref().map(|m| &m.version),
            "ids": r.rules.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        }));
    }
    match cli.output {
        Output::Json => print_json(&serde_json::Value::Array(rows)),
        Output::Table => {
            let mut table = comfy_table::Table::new();
            table.load_preset(comfy_table::presets::NOTHING);
            table.set_header(["Name", "Origin", "Kind", "Contract", "Ids"]);
            for r in rows {
                let origin = match r["origin"]["kind"].as_str() {
                    Some("file") => r["origin"]["path"].as_str().unwrap_or("file").to_string(),
                    Some("dev") => format!("{} (--plugin-dev, unpinned)", r["origin"]["path"].as_str().unwrap_or("file")),
                    _ => "built-in".into(),
                };
                let ids: Vec<&str> = r["ids"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
                // Ids come from the plugins: shown, never obeyed by the terminal.
                let ids = pgferry::terminal::printable(&ids.join(", "), false);
                table.add_row([r["name"].as_str().unwrap_or(""), &origin, r["world"].as_str().unwrap_or(""), r["contract"].as_str().unwrap_or(""), &ids]);
            }
            print(&format!("{table}\n"));
        }
    }
    Ok(Exit::Ok)
}

#[allow(clippy::too_many_arguments)]
async fn plugin_test(
    cli: &Cli,
    file: &std::path::Path,
    inventory: Option<&std::path::Path>,
    live: Option<Properties>,
    target: Option<&str>,
    mode: ModeArg,
    source_type: Option<&str>,
    settings: &[String],
) -> Result<Exit> {
    use pgferry::migration::validation_in_progress::{check_report, report, rule_checks};
    use pgferry::plugin_host::{CheckContext, Services};
    let settings: Vec<(String, String)> = settings
        .iter()
        .map(|s| s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).with_context(|| format!("--setting {s:?} is not KEY=VALUE")))
        .collect::<Result<_>>()?;
    let (inventory, props) = match (inventory, live) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the inventory dump {}", path.display()))?;
            let inventory = pgferry::plugin_host::Inventory::from_fixture_json(&text).with_context(|| format!("{} is not an inventory dump (`pgferry inventory dump` writes one)", path.display()))?;
            (std::sync::Arc::new(inventory), None)
        }
        (None, Some(props)) => (migration::live_inventory(&registry(cli).await?, &props, target).await?, Some(props)),
        (None, None) => bail!("give --inventory FILE, --properties FILE, or --source URI with --target"),
    };
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let name = file.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    let host = PluginHost::new(plugins::default_cache_dir())?;
    // A test has no server connection for plugin SQL, so granting `sql` gives nothing; it
    // lets a plugin that needs the grant load and show what it does without it.
    let plugin = host
        .load_checked(&name, Origin::File(file.to_path_buf()), &bytes, Grants { sql: true }, settings, Limits::default(), &Given::Flag)
        .await
        .with_context(|| format!("{} is not a usable pgferry plugin", file.display()))?;
    let source_type = source_type.map(str::to_string).or_else(|| props.as_ref().map(|p| p.source_type.clone())).unwrap_or_else(|| "OnPremises".into());
    let dbs_to_migrate = match &props {
        Some(p) => p.dbs_to_migrate.clone(),
        None => inventory.source_databases.keys().cloned().collect(),
    };
    let base = CheckContext {
        migration_name: "plugin-test".into(),
        mode: match mode {
            ModeArg::Offline => pgferry::plugin_host::MigrationMode::Offline,
            ModeArg::Online => pgferry::plugin_host::MigrationMode::Online,
        },
        migration_option: pgferry::plugin_host::MigrationOption::Validate,
        source_type: source_type.clone(),
        database: None,
        dbs_to_migrate,
        overwrite_dbs_in_target: false,
    };
    let services = std::sync::Arc::new(Services { inventory, sql: None });
    let started = chrono::Utc::now();
    let (server_checks, db_checks) = match plugin.shape.world {
        World::ValidationRule => {
            let rules = host.describe_rules(&plugin).await?;
            let rule_plugin = plugins::RulePlugin { plugin: std::sync::Arc::new(plugin), rules };
            rule_checks(&host, std::slice::from_ref(&rule_plugin), services, &base, &[source_type.to_ascii_lowercase()], &[]).await
        }
        World::SourceAdapter => {
            let findings = host.readiness(&plugin, services, &base).await;
            (vec![check_report("source-readiness", "Source readiness", &plugin.name, findings)], vec![])
        }
    };
    let report = report(started, server_checks, db_checks);
    match cli.output {
        Output::Json => print_json(&serde_json::to_value(&report)?),
        Output::Table => print(&report::validation_text(&report)),
    }
    Ok(if report.status == pgferry::migration::validation_in_progress::CheckState::Failed { Exit::ValidationFailed } else { Exit::Ok })
}

/// A manifest as `plugin inspect --output json` shows it (the contract's names, camelCase).
fn manifest_json(m: &pgferry::plugin_host::PluginManifest) -> serde_json::Value {
    serde_json::json!({
        "id": m.id, "version": m.version, "description": m.description,
        "settings": m.settings.iter().map(|s| serde_json::json!({
            "name": s.name, "description": s.description, "type": manifest::type_name(s.value_type),
            "default": s.default, "required": s.required,
        })).collect::<Vec<_>>(),
        "grants": m.grants.iter().map(|g| manifest::grant_name(*g)).collect::<Vec<_>>(),
        "inventorySettings": m.inventory_settings,
    })
}

async fn plugin_inspect(cli: &Cli, file: &PathBuf) -> Result<Exit> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let name = file.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    let host = PluginHost::new(plugins::default_cache_dir())?;
    let plugin = host
        .load(&name, Origin::File(file.clone()), &bytes, Grants::default(), Vec::new(), Limits::default())
        .with_context(|| format!("{} is not a usable pgferry plugin", file.display()))?;
    let manifest = host.read_manifest(&plugin).await?;
    let provides: Vec<String> = match plugin.shape.world {
        World::ValidationRule => host.describe_rules(&plugin).await?.into_iter().map(|r| r.id).collect(),
        World::SourceAdapter => host.describe_adapter(&plugin).await?.info.ids,
    };
    let hosted: Vec<String> = contract::HOSTED.iter().map(ToString::to_string).collect();
    let doc = serde_json::json!({
        "file": file, "sha256": plugin.sha256, "world": plugin.shape.world,
        "contract": plugin.shape.contract.to_string(), "hostedContracts": hosted, "manifest": manifest.as_ref().map(manifest_json),
        "imports": plugin.shape.imports, "exports": plugin.shape.exports, "provides": provides,
    });
    match cli.output {
        Output::Json => print_json(&doc),
        Output::Table => {
            // Everything but the sha256 and the versions comes from the plugin: shown, never
            // obeyed by the terminal.
            let p = |s: &str| pgferry::terminal::printable(s, false);
            let mut out = format!(
                "File      {}\nsha256    {}\nWorld     {}\nContract  {} (this runner hosts {})\n",
                file.display(),
                plugin.sha256,
                plugin.shape.world,
                plugin.shape.contract,
                contract::hosted_list(),
            );
            match &manifest {
                None => out.push_str("Manifest  none (contract 0.1.0: settings are passed unchecked)\n"),
                Some(m) => {
                    out.push_str(&format!("Plugin    {} {}: {}\n", p(&m.id), p(&m.version), p(&m.description)));
                    for s in &m.settings {
                        let default = match (&s.default, s.required) {
                            (_, true) => "required".to_string(),
                            (Some(d), _) => format!("default {}", p(d)),
                            (None, _) => "optional".to_string(),
                        };
                        out.push_str(&format!("Setting   {} ({}, {default}): {}\n", p(&s.name), manifest::type_name(s.value_type), p(&s.description)));
                    }
                    let grants: Vec<&str> = m.grants.iter().map(|g| manifest::grant_name(*g)).collect();
                    out.push_str(&format!("Grants    {}\n", if grants.is_empty() { "none".into() } else { grants.join(", ") }));
                    if !m.inventory_settings.is_empty() {
                        out.push_str(&format!("Reads     {}\n", p(&m.inventory_settings.join(", "))));
                    }
                }
            }
            out.push_str(&format!(
                "Provides  {}\nImports   {}\nExports   {}\n",
                p(&provides.join(", ")),
                p(&plugin.shape.imports.join(", ")),
                p(&plugin.shape.exports.join(", ")),
            ));
            print(&out);
        }
    }
    Ok(Exit::Ok)
}

fn plugin_new(cli: &Cli, kind: KindArg, name: &str, lang: LangArg, dir: Option<&std::path::Path>) -> Result<Exit> {
    use pgferry::scaffold::{self, Kind, Lang};
    let kind = match kind {
        KindArg::Rule => Kind::Rule,
        KindArg::Adapter => Kind::Adapter,
    };
    let lang = match lang {
        LangArg::Rust => Lang::Rust,
        LangArg::Python => Lang::Python,
    };
    let dir = dir.map(PathBuf::from).unwrap_or_else(|| PathBuf::from(name));
    let files = scaffold::new_project(&dir, name, kind, lang)?;
    let test = match lang {
        Lang::Rust => "cargo test",
        Lang::Python => "python3 -m unittest discover -s tests",
    };
    match cli.output {
        Output::Json => print_json(&serde_json::json!({
            "name": name, "world": kind.world(), "lang": lang.to_string(), "contract": scaffold::CONTRACT,
            "dir": dir, "files": files, "test": test, "build": "pgferry plugin build .",
        })),
        Output::Table => print(&format!(
            "Created {} plugin `{name}` ({lang}, contract {}) in {}\n\nNext:\n  cd {}\n  {test:<38}# native tests against an inventory fixture\n  {:<38}# dist/{name}.wasm and its pinned [[plugin]] block\n",
            kind.world(),
            scaffold::CONTRACT,
            dir.display(),
            dir.display(),
            "pgferry plugin build .",
        )),
    }
    if lang == Lang::Python && !command_exists("componentize-py") {
        eprintln!("note: componentize-py is not installed; the tests and the build need it: run `pip install {}`", scaffold::COMPONENTIZE_PY);
    }
    Ok(Exit::Ok)
}

fn command_exists(program: &str) -> bool {
    std::process::Command::new(program).arg("--version").stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().is_ok()
}

async fn plugin_build(cli: &Cli, dir: &std::path::Path) -> Result<Exit> {
    let built = pgferry::scaffold::build(dir)?;
    // What would a runner make of it? The same load a plugin configuration entry gets.
    let bytes = std::fs::read(&built.wasm).with_context(|| format!("cannot read {}", built.wasm.display()))?;
    let host = PluginHost::new(plugins::default_cache_dir())?;
    let plugin = host
        .load(&built.name, Origin::File(built.wasm.clone()), &bytes, Grants::default(), Vec::new(), Limits::default())
        .with_context(|| format!("{} was built but this runner cannot load it", built.wasm.display()))?;
    let provides: Vec<String> = match plugin.shape.world {
        World::ValidationRule => host.describe_rules(&plugin).await?.into_iter().map(|r| r.id).collect(),
        World::SourceAdapter => host.describe_adapter(&plugin).await?.info.ids,
    };
    let block = built.plugin_block();
    match cli.output {
        Output::Json => print_json(&serde_json::json!({
            "name": built.name, "lang": built.lang.to_string(), "file": built.wasm, "sha256": built.sha256,
            "world": plugin.shape.world, "contract": plugin.shape.contract.to_string(), "provides": provides, "plugin": block,
        })),
        Output::Table => {
            eprintln!(
                "built {} ({}, contract {}, {} bytes), provides: {}",
                built.wasm.display(),
                plugin.shape.world,
                plugin.shape.contract,
                bytes.len(),
                pgferry::terminal::printable(&provides.join(", "), false)
            );
            // Only the block on stdout: `pgferry plugin build . >> plugins.toml` pins it.
            print(&block);
        }
    }
    Ok(Exit::Ok)
}
