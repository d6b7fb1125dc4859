//! One connection configuration per server, resolved once the way libpq resolves it, and the
//! one place that turns it into what each consumer needs: tokio-postgres with rustls
//! (`connect.rs`), the replication client (pgwire-replication) and the connection string of
//! the pg_dump/pg_restore children.
//!
//! Keys, under their libpq names, and where each comes from, first match wins (an explicit
//! property or flag, then the postgres URI, then the environment, then the default):
//!
//! | key | property / flag | URI | environment | default |
//! |---|---|---|---|---|
//! | `host` | `SourceDbServerFullyQualifiedDomainName`, `--target host` | host part, `?host=` | `PGHOST` (target only) | — (an error) |
//! | `port` | `host:port` | port part, `?port=` | `PGPORT` | 5432 |
//! | `user` | `sourceServerUserName`, `targetServerUserName`, `host@user` | user part, `?user=` | `PGUSER` | `postgres` |
//! | `password` | `SecretParameters.AdminCredentials.*ServerPassword` | password part, `?password=` | `PGPASSWORD`, then `PGPASSFILE`/`~/.pgpass` at connect time | none |
//! | `dbname` | — | path, `?dbname=` | — | `postgres` |
//! | `sslmode` | `sslMode` (source) | `?sslmode=` (every libpq mode; `?ssl=true` is `require`) | `PGSSLMODE` | source: the adapter's preferred mode; target: `prefer` |
//! | `sslrootcert` | — | `?sslrootcert=` (a file, or `system` for the public web roots) | `PGSSLROOTCERT` | `~/.postgresql/root.crt` |
//! | `connect_timeout` | — | `?connect_timeout=` (seconds) | `PGCONNECT_TIMEOUT` | 10 |
//! | `application_name` | — | `?application_name=` | `PGAPPNAME` | `pgferry` |
//!
//! `dbname` is the database for server-wide work (inventory, roles, creating and dropping
//! databases), so it may not be one of `DBsToMigrate`, which names the migrated databases. `PGDATABASE` is not read: it usually
//! names an application database, which does not exist on the target yet.
//!
//! Not honoured, on purpose, for any connection (pgferry's own, replication, children):
//! `hostaddr`/`PGHOSTADDR` (one address for both servers would send the source's and the
//! target's credentials to the same place), client certificates (`sslcert`, `sslkey`,
//! `PGSSLCERT`, `PGSSLKEY`), CRLs, `PGSERVICE`, `PGOPTIONS`. A URI naming one of them is an
//! error; such a variable in the environment is ignored with a warning. The children get the
//! resolved values as an explicit connection string and none of the `PG*` variables.
//!
//! TLS, as libpq: `disable` never encrypts; `prefer` encrypts when the server can and falls
//! back to plain text; `require` insists on encryption; with a root certificate file present,
//! `prefer` and `require` also verify the chain (libpq's "verify-ca behaviour"); `verify-ca`
//! verifies the chain and `verify-full` the chain and the host name, and both fail when there
//! is no root certificate file ("root certificate file does not exist"), rather than fall
//! back to some other trust: `sslrootcert=system` asks for the public web roots explicitly,
//! and then only `verify-full` is allowed (as libpq 16).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::plugin_host::SslMode as WitSslMode;
use crate::properties::Secret;

/// Which server a connection is for, as users call it in messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Source,
    Target,
    /// The PostgreSQL control database holding the state store.
    Store,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Source => "source",
            Role::Target => "target",
            Role::Store => "state store",
        })
    }
}

/// sslMode as the properties spell it; meanings as libpq's sslmode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCA,
    VerifyFull,
}

impl SslMode {
    /// Both spellings: the properties' (`VerifyFull`) and libpq's (`verify-full`). libpq's
    /// `allow` (plain text first) is taken as `prefer`, which tries TLS first.
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "disable" => SslMode::Disable,
            "prefer" | "allow" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verifyca" => SslMode::VerifyCA,
            "verifyfull" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// libpq's spelling, for connection strings.
    pub fn libpq_name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCA => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// The plugin contract's spelling.
    pub fn to_wit(self) -> WitSslMode {
        match self {
            SslMode::Disable => WitSslMode::Disable,
            SslMode::Prefer => WitSslMode::Prefer,
            SslMode::Require => WitSslMode::Require,
            SslMode::VerifyCA => WitSslMode::VerifyCa,
            SslMode::VerifyFull => WitSslMode::VerifyFull,
        }
    }

    pub fn from_wit(mode: WitSslMode) -> SslMode {
        match mode {
            WitSslMode::Disable => SslMode::Disable,
            WitSslMode::Prefer => SslMode::Prefer,
            WitSslMode::Require => SslMode::Require,
            WitSslMode::VerifyCa => SslMode::VerifyCA,
            WitSslMode::VerifyFull => SslMode::VerifyFull,
        }
    }
}

/// What a server's certificate is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file that exists.
    File(PathBuf),
    /// `sslrootcert=system`: the public web roots, asked for by name.
    System,
    /// The file libpq would read does not exist: nothing to verify with.
    Missing(PathBuf),
}

/// One server's settings as given (properties, flags, a URI, the environment), each
/// optional; [`ConnParams::or`] layers them, [`ConnParams::resolve`] fills the defaults.
/// Stored with a migration (less the password) so that a resume connects as `create` did.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ConnParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip)]
    pub password: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dbname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sslmode: Option<SslMode>,
    /// A file name, or `system`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sslrootcert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_name: Option<String>,
}

/// libpq keys pgferry refuses in a URI, with the reason.
const REFUSED_KEYS: &[(&str, &str)] = &[
    ("hostaddr", "give the address as the host instead"),
    ("sslcert", "pgferry does not log in with client certificates"),
    ("sslkey", "pgferry does not log in with client certificates"),
    ("sslpassword", "pgferry does not log in with client certificates"),
    ("sslcrl", "pgferry does not read certificate revocation lists"),
    ("sslcrldir", "pgferry does not read certificate revocation lists"),
    ("service", "give the server's settings directly"),
    ("options", "pgferry sets the session options it needs itself"),
];

/// Environment variables libpq reads that pgferry ignores (see the module docs).
const IGNORED_VARIABLES: &[&str] = &["PGHOSTADDR", "PGSSLCERT", "PGSSLKEY", "PGSSLCRL", "PGSSLCRLDIR", "PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGDATABASE"];

impl ConnParams {
    /// `self`, with what it leaves open taken from `lower`.
    pub fn or(self, lower: ConnParams) -> ConnParams {
        ConnParams {
            host: self.host.or(lower.host),
            port: self.port.or(lower.port),
            user: self.user.or(lower.user),
            password: self.password.or(lower.password),
            dbname: self.dbname.or(lower.dbname),
            sslmode: self.sslmode.or(lower.sslmode),
            sslrootcert: self.sslrootcert.or(lower.sslrootcert),
            connect_timeout: self.connect_timeout.or(lower.connect_timeout),
            application_name: self.application_name.or(lower.application_name),
        }
    }

    /// The `PG*` variables pgferry honours. `with_host`: PGHOST counts (the target's, as
    /// libpq's default server; the source is always named in the properties).
    pub fn from_env(with_host: bool) -> Result<ConnParams> {
        Self::from_vars(|k| std::env::var(k).ok(), with_host)
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>, with_host: bool) -> Result<ConnParams> {
        // Once per run, though both servers read the environment.
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            for name in IGNORED_VARIABLES {
                if var(name).is_some() {
                    tracing::warn!("{name} is set but pgferry does not use it (see the connection settings in README)");
                }
            }
        });
        let number = |name: &str| -> Result<Option<u64>> {
            var(name).filter(|v| !v.is_empty()).map(|v| v.trim().parse().with_context(|| format!("{name}={v:?} is not a number"))).transpose()
        };
        Ok(ConnParams {
            host: var("PGHOST").filter(|_| with_host).filter(|h| !h.is_empty()),
            port: number("PGPORT")?.map(|p| u16::try_from(p).with_context(|| format!("PGPORT={p} is not a port number"))).transpose()?,
            user: var("PGUSER").filter(|u| !u.is_empty()),
            password: var("PGPASSWORD").map(Secret::new),
            dbname: None,
            sslmode: var("PGSSLMODE")
                .map(|m| SslMode::parse(&m).with_context(|| format!("PGSSLMODE={m:?} is not a libpq sslmode (disable, allow, prefer, require, verify-ca, verify-full)")))
                .transpose()?,
            sslrootcert: var("PGSSLROOTCERT").filter(|r| !r.is_empty()),
            connect_timeout: number("PGCONNECT_TIMEOUT")?,
            application_name: var("PGAPPNAME"),
        })
    }

    /// A libpq URI: `postgres[ql]://[user[:password]@][host][:port][/dbname][?key=value&…]`,
    /// percent-decoded. Errors never repeat the password.
    pub fn parse_uri(uri: &str) -> Result<ConnParams> {
        let spelled = without_password(uri);
        let rest = uri
            .strip_prefix("postgresql://")
            .or_else(|| uri.strip_prefix("postgres://"))
            .with_context(|| format!("{spelled:?} is not a postgres URI (postgresql://…)"))?;
        let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match main.find('/') {
            Some(i) => (&main[..i], Some(&main[i + 1..])),
            None => (main, None),
        };
        let mut params = ConnParams::default();
        let hosts = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                let (user, password) = match userinfo.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (userinfo, None),
                };
                params.user = Some(decode(user, &spelled)?).filter(|u| !u.is_empty());
                params.password = password.map(|p| decode(p, &spelled).map(Secret::new)).transpose()?;
                hosts
            }
            None => authority,
        };
        if hosts.contains(',') {
            bail!("{spelled:?} names several hosts; pgferry connects to one server per side: name the one to use");
        }
        let (host, port) = split_host_port(hosts).with_context(|| format!("in {spelled:?}"))?;
        params.host = Some(decode(host, &spelled)?).filter(|h| !h.is_empty());
        params.port = port.map(|p| p.parse().with_context(|| format!("{p:?} in {spelled:?} is not a port number"))).transpose()?;
        params.dbname = path.map(|p| decode(p, &spelled)).transpose()?.filter(|d| !d.is_empty());
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').with_context(|| format!("{pair:?} in {spelled:?} is not key=value"))?;
            let value = decode(value, &spelled)?;
            params.set(key, value).with_context(|| format!("in {spelled:?}"))?;
        }
        if let Some(host) = &params.host
            && host.starts_with('/')
        {
            bail!("{spelled:?} names a Unix socket directory; pgferry connects over TCP: give a host name or address");
        }
        Ok(params)
    }

    /// One `key=value` of a URI's query (a value there overrides the same part of the URI,
    /// as libpq has it).
    fn set(&mut self, key: &str, value: String) -> Result<()> {
        match key {
            "host" => self.host = Some(value),
            "port" => self.port = Some(value.parse().with_context(|| format!("port {value:?} is not a port number"))?),
            "user" => self.user = Some(value),
            "password" => self.password = Some(Secret::new(value)),
            "dbname" => self.dbname = Some(value),
            "sslmode" => {
                self.sslmode = Some(SslMode::parse(&value).with_context(|| format!("sslmode {value:?} is not a libpq sslmode (disable, allow, prefer, require, verify-ca, verify-full)"))?)
            }
            // JDBC's spelling, which libpq accepts in URIs too.
            "ssl" if value == "true" => self.sslmode = Some(self.sslmode.map_or(SslMode::Require, |m| m.max(SslMode::Require))),
            "sslrootcert" => self.sslrootcert = Some(value),
            "connect_timeout" => self.connect_timeout = Some(value.parse().with_context(|| format!("connect_timeout {value:?} is not a number of seconds"))?),
            "application_name" => self.application_name = Some(value),
            _ => match REFUSED_KEYS.iter().find(|(k, _)| *k == key) {
                Some((_, why)) => bail!("parameter `{key}` is not supported: {why}"),
                None => bail!(
                    "unknown parameter `{key}` (pgferry takes host, port, user, password, dbname, sslmode, sslrootcert, connect_timeout, application_name)"
                ),
            },
        }
        Ok(())
    }

    /// The settings of one server, defaults filled in. `default_sslmode`: the mode when
    /// nobody chose one (the source adapter's preferred mode, or `prefer`).
    pub fn resolve(self, role: Role, default_sslmode: SslMode) -> Result<ConnSpec> {
        self.resolve_with_home(role, default_sslmode, std::env::var_os("HOME").map(PathBuf::from))
    }

    fn resolve_with_home(self, role: Role, default_sslmode: SslMode, home: Option<PathBuf>) -> Result<ConnSpec> {
        let host = self.host.with_context(|| match role {
            Role::Source => "no source server: set SourceDBServerResourceId (host:port@user or a postgres URI)".to_string(),
            Role::Target => "no target server: pass --target host:port (or a postgres URI), set TargetDbServerFullyQualifiedDomainName in the properties, or PGHOST".to_string(),
            Role::Store => "no state store server: give --store postgres://user@host:port/dbname".to_string(),
        })?;
        let root_cert = match self.sslrootcert.as_deref() {
            Some("system") => RootCert::System,
            Some(path) => existing(PathBuf::from(path)),
            None => match home {
                Some(home) => existing(home.join(".postgresql/root.crt")),
                None => RootCert::Missing(PathBuf::from("~/.postgresql/root.crt")),
            },
        };
        Ok(ConnSpec {
            role,
            host,
            port: self.port.unwrap_or(5432),
            user: self.user.unwrap_or_else(|| "postgres".into()),
            password: self.password,
            dbname: self.dbname.unwrap_or_else(|| "postgres".into()),
            ssl_mode: self.sslmode.unwrap_or(default_sslmode),
            root_cert,
            // libpq waits forever without one; a migration tool should say what is wrong.
            connect_timeout: Duration::from_secs(self.connect_timeout.filter(|s| *s > 0).unwrap_or(10)),
            application_name: self.application_name.unwrap_or_else(|| "pgferry".into()),
        })
    }
}

fn existing(path: PathBuf) -> RootCert {
    if path.exists() { RootCert::File(path) } else { RootCert::Missing(path) }
}

/// `host[:port]`, the host possibly `[v6]`.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').context("an IPv6 address lacks its closing `]`")?;
        return Ok(match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => bail!("{after:?} after the IPv6 address is not `:port`"),
        });
    }
    Ok(match s.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    })
}

/// Percent-decoding, as libpq does for every part of a URI.
fn decode(s: &str, spelled: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.with_context(|| format!("{spelled:?} holds a bad percent-encoding"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).with_context(|| format!("{spelled:?} decodes to something that is not UTF-8"))
}

/// A postgres URI less its secrets: the password of `user:password@` and a `password=`
/// parameter.
pub fn without_password(uri: &str) -> String {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("", uri));
    let (main, query) = match rest.split_once('?') {
        Some((main, query)) => (main, Some(query)),
        None => (rest, None),
    };
    // The authority ends at the first `/`; its user info at the last `@` before that.
    let (authority, path) = match main.find('/') {
        Some(i) => main.split_at(i),
        None => (main, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => format!("{}@{hosts}", userinfo.split(':').next().unwrap_or_default()),
        None => authority.to_string(),
    };
    let mut out = format!("{scheme}://{authority}{path}");
    if let Some(query) = query {
        let kept: Vec<&str> = query.split('&').filter(|kv| !kv.split('=').next().unwrap_or_default().eq_ignore_ascii_case("password")).collect();
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
    }
    out
}

/// The resolved settings of one server: every connection pgferry makes to it, the
/// replication connection and the children's connection string come from this.
#[derive(Clone, Debug)]
pub struct ConnSpec {
    pub role: Role,
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The password given (properties, URI, PGPASSWORD); `~/.pgpass` is read at connect
    /// time with the final host, port, database and user, as libpq does.
    pub password: Option<Secret>,
    /// The database for server-wide work.
    pub dbname: String,
    pub ssl_mode: SslMode,
    pub root_cert: RootCert,
    pub connect_timeout: Duration,
    pub application_name: String,
}

/// How the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Not at all (or no TLS).
    Nothing,
    /// The chain against the root certificate; not the host name.
    Chain,
    /// The chain and the host name.
    ChainAndHost,
}

impl ConnSpec {
    /// Everything resolved but the password, as params that resolve to the same again.
    pub fn params(&self) -> ConnParams {
        ConnParams {
            host: Some(self.host.clone()),
            port: Some(self.port),
            user: Some(self.user.clone()),
            password: None,
            dbname: Some(self.dbname.clone()),
            sslmode: Some(self.ssl_mode),
            sslrootcert: Some(match &self.root_cert {
                RootCert::File(path) | RootCert::Missing(path) => path.to_string_lossy().into_owned(),
                RootCert::System => "system".into(),
            }),
            connect_timeout: Some(self.connect_timeout.as_secs()),
            application_name: Some(self.application_name.clone()),
        }
    }

    pub fn describe(&self) -> String {
        format!("{} server {}:{}", self.role, self.host, self.port)
    }

    /// The password for a connection to `db`: the one given, else `~/.pgpass`'s.
    pub fn password_for(&self, db: &str) -> Option<Secret> {
        self.password.clone().or_else(|| crate::connect::pgpass_lookup(&self.host, self.port, db, &self.user).map(Secret::new))
    }

    /// What libpq would check with this sslmode and root certificate; the verifying modes
    /// without a root certificate file are an error, as in libpq.
    pub fn verify(&self) -> Result<Verify> {
        let hint = "give the CA certificate that signed the server's certificate as sslrootcert in the URI or PGSSLROOTCERT (or sslrootcert=system to trust the public web roots, with VerifyFull)";
        Ok(match (self.ssl_mode, &self.root_cert) {
            (SslMode::Disable, _) => Verify::Nothing,
            (SslMode::Prefer | SslMode::Require | SslMode::VerifyCA, RootCert::System) => bail!(
                "sslmode {} may not be used with sslrootcert=system for the {} (as in libpq): use sslMode VerifyFull, or give a CA file",
                self.ssl_mode.libpq_name(),
                self.describe()
            ),
            (SslMode::Prefer | SslMode::Require, RootCert::File(_)) => Verify::Chain,
            (SslMode::Prefer | SslMode::Require, RootCert::Missing(_)) => Verify::Nothing,
            (SslMode::VerifyCA | SslMode::VerifyFull, RootCert::Missing(path)) => bail!(
                "root certificate file {} does not exist, so the certificate of the {} cannot be verified (sslMode {:?}); {hint}",
                path.display(),
                self.describe(),
                self.ssl_mode
            ),
            (SslMode::VerifyCA, RootCert::File(_)) => Verify::Chain,
            (SslMode::VerifyFull, _) => Verify::ChainAndHost,
        })
    }

    /// The libpq connection string for `db` on this server, for the children. Every value
    /// is quoted, so a database named `host=elsewhere` or `postgresql://…` stays a name:
    /// libpq expands a `--dbname` that looks like a connection string, but not the values
    /// inside one. The password is not in it (see `pg_tools::libpq_command`).
    pub fn conninfo(&self, db: &str) -> String {
        let mut pairs = vec![
            ("host", self.host.clone()),
            ("port", self.port.to_string()),
            ("user", self.user.clone()),
            ("dbname", db.to_string()),
            ("sslmode", self.ssl_mode.libpq_name().to_string()),
            ("connect_timeout", self.connect_timeout.as_secs().max(1).to_string()),
            ("application_name", self.application_name.clone()),
        ];
        // The children get no PG* variable and would look for ~/.postgresql/root.crt on
        // their own: name the file pgferry decided on (or none) so they verify as it does.
        match &self.root_cert {
            RootCert::File(path) => pairs.push(("sslrootcert", path.to_string_lossy().into_owned())),
            RootCert::System => pairs.push(("sslrootcert", "system".into())),
            RootCert::Missing(_) if self.ssl_mode < SslMode::VerifyCA => pairs.push(("sslrootcert", "/nonexistent/pgferry-no-root-certificate".into())),
            RootCert::Missing(path) => pairs.push(("sslrootcert", path.to_string_lossy().into_owned())),
        }
        pairs.iter().map(|(k, v)| format!("{k}={}", conninfo_quote(v))).collect::<Vec<_>>().join(" ")
    }
}

/// `'value'` with `\` and `'` escaped, as libpq's conninfo parser reads it.
pub fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn every_libpq_sslmode_parses_in_a_uri() {
        for (text, mode) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Prefer),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCA),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let p = ConnParams::parse_uri(&format!("postgresql://h/db?sslmode={text}")).unwrap();
            assert_eq!(p.sslmode, Some(mode), "{text}");
            assert_eq!(mode.libpq_name(), if text == "allow" { "prefer" } else { text });
            assert_eq!(SslMode::from_wit(mode.to_wit()), mode);
        }
        assert_eq!(ConnParams::parse_uri("postgres://h?ssl=true").unwrap().sslmode, Some(SslMode::Require));
        let err = format!("{:#}", ConnParams::parse_uri("postgres://u:topsecret@h/db?sslmode=sometimes").unwrap_err());
        assert!(err.contains("not a libpq sslmode") && !err.contains("topsecret"), "{err}");
    }

    #[test]
    fn uri_forms_as_libpq_reads_them() {
        let p = ConnParams::parse_uri("postgresql://al%40ice:s3cr%40t@db.example:6432/my%20db?connect_timeout=3&application_name=x&sslrootcert=/ca.pem").unwrap();
        assert_eq!(p.user.as_deref(), Some("al@ice"));
        assert_eq!(p.password.as_ref().map(Secret::expose), Some("s3cr@t"));
        assert_eq!((p.host.as_deref(), p.port, p.dbname.as_deref()), (Some("db.example"), Some(6432), Some("my db")));
        assert_eq!((p.connect_timeout, p.application_name.as_deref(), p.sslrootcert.as_deref()), (Some(3), Some("x"), Some("/ca.pem")));

        let p = ConnParams::parse_uri("postgres://[::1]:5433").unwrap();
        assert_eq!((p.host.as_deref(), p.port, p.user, p.dbname), (Some("::1"), Some(5433), None, None));
        // Query values override the parts, as in libpq.
        let p = ConnParams::parse_uri("postgres://h:1/a?host=other&port=2&dbname=b&user=u&password=pw").unwrap();
        assert_eq!((p.host.as_deref(), p.port, p.dbname.as_deref(), p.user.as_deref()), (Some("other"), Some(2), Some("b"), Some("u")));
        assert_eq!(p.password.as_ref().map(Secret::expose), Some("pw"));
        assert_eq!(ConnParams::parse_uri("postgresql://").unwrap(), ConnParams::default());

        let err = |uri: &str| format!("{:#}", ConnParams::parse_uri(uri).unwrap_err());
        assert!(err("postgres://h1,h2/db").contains("several hosts"));
        assert!(err("postgres://h/db?hostaddr=10.0.0.1").contains("give the address as the host"));
        assert!(err("postgres://h/db?sslcert=/c").contains("client certificates"));
        assert!(err("postgres://h/db?frobnicate=1").contains("unknown parameter `frobnicate`"));
        assert!(err("postgres://h:x/db").contains("not a port number"));
        assert!(err("postgres://%2Ftmp/db").contains("Unix socket"));
        assert!(err("mysql://h").contains("not a postgres URI"));
    }

    #[test]
    fn precedence_is_explicit_then_uri_then_environment_then_defaults() {
        let explicit = ConnParams { user: Some("given".into()), sslmode: Some(SslMode::VerifyFull), ..Default::default() };
        let uri = ConnParams::parse_uri("postgres://uri-user:uri-pw@uri-host/app?sslmode=require&connect_timeout=4").unwrap();
        let env = ConnParams::from_vars(
            vars(&[("PGHOST", "env-host"), ("PGPORT", "7000"), ("PGUSER", "env-user"), ("PGPASSWORD", "env-pw"), ("PGSSLMODE", "disable"), ("PGCONNECT_TIMEOUT", "9"), ("PGAPPNAME", "env-app"), ("PGSSLROOTCERT", "/env/ca.pem")]),
            true,
        )
        .unwrap();
        let spec = explicit.or(uri).or(env.clone()).resolve_with_home(Role::Target, SslMode::Prefer, None).unwrap();
        assert_eq!((spec.host.as_str(), spec.port, spec.user.as_str(), spec.dbname.as_str()), ("uri-host", 7000, "given", "app"));
        assert_eq!(spec.password.as_ref().map(Secret::expose), Some("uri-pw"));
        assert_eq!((spec.ssl_mode, spec.connect_timeout, spec.application_name.as_str()), (SslMode::VerifyFull, Duration::from_secs(4), "env-app"));
        assert_eq!(spec.root_cert, RootCert::Missing("/env/ca.pem".into()));

        // Only the environment: it fills everything it names.
        let spec = env.resolve_with_home(Role::Target, SslMode::Prefer, None).unwrap();
        assert_eq!((spec.host.as_str(), spec.port, spec.user.as_str(), spec.ssl_mode), ("env-host", 7000, "env-user", SslMode::Disable));
        // Nothing: libpq's defaults, pgferry's timeout, and the default sslmode given.
        let home = std::env::temp_dir().join(format!("pgferry-home-{}", std::process::id()));
        std::fs::create_dir_all(home.join(".postgresql")).unwrap();
        std::fs::write(home.join(".postgresql/root.crt"), "").unwrap();
        let spec = ConnParams { host: Some("h".into()), ..Default::default() }.resolve_with_home(Role::Source, SslMode::Require, Some(home.clone())).unwrap();
        assert_eq!((spec.port, spec.user.as_str(), spec.dbname.as_str(), spec.ssl_mode), (5432, "postgres", "postgres", SslMode::Require));
        assert_eq!((spec.connect_timeout, spec.application_name.as_str()), (Duration::from_secs(10), "pgferry"));
        assert_eq!(spec.root_cert, RootCert::File(home.join(".postgresql/root.crt")));
        std::fs::remove_dir_all(&home).unwrap();

        // PGHOST is the target's default server only.
        let env = ConnParams::from_vars(vars(&[("PGHOST", "env-host")]), false).unwrap();
        assert!(format!("{:#}", env.resolve_with_home(Role::Source, SslMode::Prefer, None).unwrap_err()).contains("no source server"));
        assert!(format!("{:#}", ConnParams::from_vars(vars(&[("PGSSLMODE", "sometimes")]), true).unwrap_err()).contains("PGSSLMODE"));
    }

    #[test]
    fn verification_follows_libpq() {
        let spec = |mode, root_cert| ConnSpec {
            role: Role::Source,
            host: "h".into(),
            port: 5432,
            user: "u".into(),
            password: None,
            dbname: "postgres".into(),
            ssl_mode: mode,
            root_cert,
            connect_timeout: Duration::from_secs(1),
            application_name: "pgferry".into(),
        };
        let file = || RootCert::File("/ca.pem".into());
        let missing = || RootCert::Missing("/home/u/.postgresql/root.crt".into());
        let verify = |mode, root| spec(mode, root).verify().map_err(|e| e.to_string());
        assert_eq!(verify(SslMode::Disable, file()), Ok(Verify::Nothing));
        assert_eq!(verify(SslMode::Prefer, missing()), Ok(Verify::Nothing));
        assert_eq!(verify(SslMode::Require, missing()), Ok(Verify::Nothing));
        // A root certificate present: require (and prefer) verify the chain, as libpq.
        assert_eq!(verify(SslMode::Prefer, file()), Ok(Verify::Chain));
        assert_eq!(verify(SslMode::Require, file()), Ok(Verify::Chain));
        assert_eq!(verify(SslMode::VerifyCA, file()), Ok(Verify::Chain));
        assert_eq!(verify(SslMode::VerifyFull, file()), Ok(Verify::ChainAndHost));
        assert_eq!(verify(SslMode::VerifyFull, RootCert::System), Ok(Verify::ChainAndHost));
        let err = verify(SslMode::VerifyFull, missing()).unwrap_err();
        assert!(err.contains("root certificate file /home/u/.postgresql/root.crt does not exist") && err.contains("PGSSLROOTCERT"), "{err}");
        assert!(verify(SslMode::VerifyCA, missing()).is_err());
        assert!(verify(SslMode::Require, RootCert::System).unwrap_err().contains("sslrootcert=system"));

        let info = spec(SslMode::VerifyFull, file()).conninfo("db");
        assert!(info.contains("sslmode='verify-full'") && info.ends_with("sslrootcert='/ca.pem'"), "{info}");
        // No root certificate: the child must not find one of its own either.
        assert!(spec(SslMode::Require, missing()).conninfo("db").ends_with("sslrootcert='/nonexistent/pgferry-no-root-certificate'"));
    }
}
