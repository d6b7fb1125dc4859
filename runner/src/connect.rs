//! Connections as libpq users expect them, from the one [`ConnSpec`] per server (see
//! `conn_config`): sslmode with libpq's meaning, done with rustls (tokio-postgres alone
//! verifies every TLS connection like verify-full and cannot do prefer/require against a
//! self-signed server), for pgferry's own connections and the replication connection alike.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::Client;

pub use crate::conn_config::{ConnSpec, Role};
use crate::conn_config::{RootCert, Verify};
use crate::properties::SslMode;

/// How a connection ended up protected, for `show` and the validation report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TlsState {
    /// Plain text.
    None,
    /// Encrypted, server certificate not checked (Prefer, Require without a root certificate).
    Unverified,
    /// Chain checked against the root certificate, host name not (VerifyCA, and Prefer or
    /// Require with a root certificate file, as libpq).
    VerifiedCa,
    /// Chain and host name checked (VerifyFull).
    VerifiedFull,
}

/// The certificate a chain-only verifier accepted, for the replication connection.
type Seen = Arc<Mutex<Option<CertificateDer<'static>>>>;

impl ConnSpec {
    /// Connects to `dbname`; errors say which server, what failed and what to do.
    pub async fn connect(&self, dbname: &str) -> Result<(Client, TlsState)> {
        let (client, state, _) = self.connect_seeing(dbname).await?;
        Ok((client, state))
    }

    async fn connect_seeing(&self, dbname: &str) -> Result<(Client, TlsState, Seen)> {
        let verify = self.verify()?;
        let seen = Seen::default();
        let result = self.connect_with(dbname, self.ssl_mode, verify, &seen).await;
        let (client, encrypted) = match result {
            // libpq's prefer gives up on TLS when the handshake fails (a root certificate
            // that does not verify the server included) and tries plain text.
            Err(e) if self.ssl_mode == SslMode::Prefer && is_tls_failure(&e) => {
                tracing::warn!("TLS to the {} failed ({e:#}); sslMode Prefer falls back to plain text", self.describe());
                self.connect_with(dbname, SslMode::Disable, Verify::Nothing, &seen).await?
            }
            other => other?,
        };
        let state = match (encrypted, verify) {
            (false, _) => TlsState::None,
            (true, Verify::Nothing) => TlsState::Unverified,
            (true, Verify::Chain) => TlsState::VerifiedCa,
            (true, Verify::ChainAndHost) => TlsState::VerifiedFull,
        };
        if state == TlsState::Unverified {
            tracing::warn!("the connection to the {} is encrypted but its certificate is not verified (sslMode {:?}, no root certificate); use VerifyFull with sslrootcert to check it", self.describe(), self.ssl_mode);
        }
        Ok((client, state, seen))
    }

    async fn connect_with(&self, dbname: &str, ssl_mode: SslMode, verify: Verify, seen: &Seen) -> Result<(Client, bool), ConnectError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(dbname)
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout);
        if let Some(pw) = self.password_for(dbname) {
            config.password(pw.expose());
        }
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCA | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.tls_config(verify, seen.clone()).map_err(ConnectError::Other)?);
        let (client, connection) = match tokio::time::timeout(self.connect_timeout, config.connect(tls)).await {
            Ok(Ok(pair)) => pair,
            // A server down or restarting is worth trying again; a refused login is not.
            Ok(Err(e)) if is_lost(&e) => {
                return Err(ConnectError::Other(ConnectionLost { role: self.role, message: format!("{:#}", self.explain(&e, dbname)) }.into()));
            }
            Ok(Err(e)) => return Err(ConnectError::Postgres(self.explain(&e, dbname), e)),
            Err(_) => {
                return Err(ConnectError::Other(
                    ConnectionLost {
                        role: self.role,
                        message: format!(
                            "cannot connect to the {}: no answer within {:?}; check that the host is reachable from this machine (firewall, security group) or raise PGCONNECT_TIMEOUT",
                            self.describe(),
                            self.connect_timeout
                        ),
                    }
                    .into(),
                ));
            }
        };
        let describe = self.describe();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection to the {describe} ended: {e}");
            }
        });
        let encrypted: bool = client
            .query_one("select coalesce((select ssl from pg_stat_ssl where pid = pg_backend_pid()), false)", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(false);
        Ok((client, encrypted))
    }

    fn tls_config(&self, verify: Verify, seen: Seen) -> Result<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS setup")?;
        let verifier: Arc<dyn ServerCertVerifier> = match verify {
            Verify::Nothing => Arc::new(AcceptAnyCert(provider)),
            Verify::Chain | Verify::ChainAndHost => {
                let roots = self.root_store()?;
                let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .context("building the certificate verifier")?;
                if verify == Verify::Chain {
                    Arc::new(IgnoreHostName { inner, seen })
                } else {
                    inner
                }
            }
        };
        Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
    }

    fn root_store(&self) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        match &self.root_cert {
            RootCert::File(path) => {
                let pem = std::fs::read(path).with_context(|| {
                    format!("cannot read the root certificate {} for the {} (sslrootcert / PGSSLROOTCERT)", path.display(), self.describe())
                })?;
                let mut added = 0;
                for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
                    let cert: CertificateDer = cert.with_context(|| format!("{} is not a PEM certificate file", path.display()))?;
                    roots.add(cert).with_context(|| format!("{} holds an unusable certificate", path.display()))?;
                    added += 1;
                }
                anyhow::ensure!(added > 0, "{} holds no certificate", path.display());
            }
            RootCert::System => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            // `verify` refuses the verifying modes without a root certificate.
            RootCert::Missing(path) => anyhow::bail!("root certificate file {} does not exist", path.display()),
        }
        Ok(roots)
    }

    /// The replication connection's TLS, checking what pgferry's own connections check.
    /// pgwire-replication's verify-ca refuses a certificate that does not name the host
    /// (it misses rustls' `NotValidForNameContext`), so for a chain-only check pgferry
    /// verifies the chain on a connection of its own first and then has the replication
    /// client verify the same chain against a name that certificate holds.
    pub async fn replication_tls(&self, db: &str) -> Result<pgwire_replication::TlsConfig> {
        use pgwire_replication::{SslMode as Wire, TlsConfig};
        let ca = match &self.root_cert {
            RootCert::File(path) => Some(path.clone()),
            _ => None,
        };
        Ok(match self.verify()? {
            Verify::Nothing => match self.ssl_mode {
                SslMode::Disable => TlsConfig::disabled(),
                SslMode::Prefer => TlsConfig { mode: Wire::Prefer, ..TlsConfig::disabled() },
                _ => TlsConfig::require(),
            },
            Verify::Chain => {
                let (_, state, seen) = self.connect_seeing(db).await?;
                let cert = seen.lock().unwrap().clone();
                match (state, cert) {
                    // Prefer fell back to plain text.
                    (TlsState::None, _) => TlsConfig::disabled(),
                    (_, Some(cert)) => TlsConfig::verify_full(ca).with_sni_hostname(self.name_in(&cert)?),
                    (_, None) => anyhow::bail!("the {} was verified but its certificate was not kept; this is a bug", self.describe()),
                }
            }
            // A host given as an IP address still needs a server name to check against.
            Verify::ChainAndHost => TlsConfig::verify_full(ca).with_sni_hostname(self.host.clone()),
        })
    }

    /// A name `cert` is valid for: the host when it is, else its first DNS name (a
    /// wildcard's `*` made a label).
    fn name_in(&self, cert: &CertificateDer<'_>) -> Result<String> {
        let end = webpki::EndEntityCert::try_from(cert).with_context(|| format!("the certificate of the {} does not parse", self.describe()))?;
        if let Ok(host) = ServerName::try_from(self.host.as_str())
            && end.verify_is_valid_for_subject_name(&host).is_ok()
        {
            return Ok(self.host.clone());
        }
        end.valid_dns_names()
            .next()
            .map(|name| name.replacen('*', "pgferry", 1))
            .with_context(|| format!("the certificate of the {} names no DNS name, so the replication connection cannot check its chain alone; use sslMode VerifyFull with the host the certificate names", self.describe()))
    }

    fn explain(&self, e: &tokio_postgres::Error, dbname: &str) -> anyhow::Error {
        let who = self.describe();
        if let Some(db) = e.as_db_error() {
            let hint = match db.code().code() {
                "28P01" | "28000" => format!(
                    "check the {} password (SecretParameters.AdminCredentials.{}ServerPassword, PGPASSWORD or ~/.pgpass) and the user name",
                    self.role,
                    if self.role == Role::Source { "Source" } else { "Target" }
                ),
                "3D000" => format!("database {dbname:?} does not exist on the {who}"),
                _ => db.hint().unwrap_or("").to_string(),
            };
            return anyhow::anyhow!("cannot connect to the {who} as {:?}: {} (SQLSTATE {}){}", self.user, db.message(), db.code().code(), if hint.is_empty() { String::new() } else { format!("\nHint: {hint}") });
        }
        let text = format!("{e:#}");
        let source = std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_default();
        let hint = if text.contains("password missing") || source.contains("password missing") {
            format!("the {who} asks for a password: give it in SecretParameters.AdminCredentials, PGPASSWORD or ~/.pgpass")
        } else if source.contains("NotValidForName") || source.contains("not valid for name") {
            format!("the certificate of the {who} does not name host {:?}; connect by a name the certificate lists, or use sslMode VerifyCA", self.host)
        } else if source.contains("UnknownIssuer") || source.contains("invalid peer certificate") {
            let root = match &self.root_cert {
                RootCert::File(path) => path.display().to_string(),
                RootCert::System => "the public web roots (sslrootcert=system)".into(),
                RootCert::Missing(path) => path.display().to_string(),
            };
            format!("the certificate of the {who} is not signed by the root certificate given ({root}; sslrootcert / PGSSLROOTCERT)")
        } else if text.contains("server does not support TLS") {
            format!("the {who} does not accept TLS; enable ssl on it or use sslMode Prefer")
        } else {
            "check the host and port, and that the server accepts connections from this machine (listen_addresses, pg_hba.conf)".to_string()
        };
        anyhow::anyhow!("cannot connect to the {who}: {text}{}\nHint: {hint}", if source.is_empty() { String::new() } else { format!(": {source}") })
    }
}

/// A failed connection attempt: the explained error, with the driver's error kept to tell a
/// TLS failure (which Prefer survives) from others.
enum ConnectError {
    Postgres(anyhow::Error, tokio_postgres::Error),
    Other(anyhow::Error),
}

impl From<ConnectError> for anyhow::Error {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Postgres(e, _) | ConnectError::Other(e) => e,
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Postgres(e, _) | ConnectError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

fn is_tls_failure(e: &ConnectError) -> bool {
    let ConnectError::Postgres(_, e) = e else { return false };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<rustls::Error>().is_some() || s.to_string().contains("invalid peer certificate") {
            return true;
        }
        source = s.source();
    }
    false
}

/// A connection that failed or ended because the server or the network went away (a
/// restart, a reset, no answer), not because the server refused what was asked: trying
/// again later may succeed. Also an earlier session of ours still holding a slot or an
/// origin, which goes away with its connection.
#[derive(Debug)]
pub struct ConnectionLost {
    /// Which server went away.
    pub role: Role,
    pub message: String,
}

impl std::fmt::Display for ConnectionLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConnectionLost {}

/// Whether a tokio-postgres error means the connection is lost (or could not be made): it
/// closed, the socket failed, the server is shutting down or starting up (57P01
/// admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now) or a connection exception
/// (class 08).
pub fn is_lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        return matches!(code.code(), "57P01" | "57P02" | "57P03") || code.code().starts_with("08");
    }
    std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>()).is_some_and(is_lost_io)
}

/// Socket errors of a peer that went away; not those of bad data or a refused handshake.
pub fn is_lost_io(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | BrokenPipe | UnexpectedEof | TimedOut | HostUnreachable | NetworkUnreachable | NetworkDown
    )
}

/// `context: pg_error(e)` as an error, marked as a [`ConnectionLost`] of the `role`
/// server when it is one, so that streaming rides it out.
pub fn pg_failure(role: Role, e: &tokio_postgres::Error, context: impl std::fmt::Display) -> anyhow::Error {
    let message = format!("{context}: {}", pg_error(e));
    if is_lost(e) { ConnectionLost { role, message }.into() } else { anyhow::anyhow!(message) }
}

/// PostgreSQL's own words for an error: message, SQLSTATE, and DETAIL, HINT and CONTEXT
/// (which, for COPY, names the row: "COPY t, line 42"). tokio-postgres' Display says only
/// "db error".
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        let source = std::error::Error::source(e).map(|s| format!(": {s}")).unwrap_or_default();
        return format!("{e}{source}");
    };
    let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
    for (label, part) in [("DETAIL", db.detail()), ("HINT", db.hint()), ("CONTEXT", db.where_())] {
        if let Some(part) = part {
            text.push_str(&format!("; {label}: {part}"));
        }
    }
    text
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// Looks the password up in PGPASSFILE or `~/.pgpass` (`host:port:db:user:password`, `*`
/// wildcards, `\` escapes). A file readable by group or others is ignored, as libpq does.
pub fn pgpass_lookup(host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let path = std::env::var_os("PGPASSFILE").map(PathBuf::from).or_else(|| Some(home()?.join(".pgpass")))?;
    pgpass_lookup_in(&path, host, port, db, user)
}

fn pgpass_lookup_in(path: &Path, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!("password file {} has group or world access; it is ignored (chmod 0600 it)", path.display());
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let port = port.to_string();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let fields = split_pgpass(line);
        if fields.len() != 5 {
            return None;
        }
        let want = [host, port.as_str(), db, user];
        let matches = fields[..4].iter().zip(want).all(|(f, w)| f == "*" || f == w || w == "*");
        matches.then(|| fields[4].clone())
    })
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().unwrap().extend(chars.next()),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

/// Require/Prefer: encrypt, but accept any certificate (libpq's meaning).
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(&self, _: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: &ServerName<'_>, _: &[u8], _: UnixTime) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// VerifyCA (and Prefer/Require with a root certificate): the chain must lead to the given
/// root; the host name is not checked. Keeps the certificate it accepted.
#[derive(Debug)]
struct IgnoreHostName {
    inner: Arc<WebPkiServerVerifier>,
    seen: Seen,
}

impl ServerCertVerifier for IgnoreHostName {
    fn verify_server_cert(&self, end: &CertificateDer<'_>, inter: &[CertificateDer<'_>], name: &ServerName<'_>, ocsp: &[u8], now: UnixTime) -> Result<ServerCertVerified, rustls::Error> {
        let verified = match self.inner.verify_server_cert(end, inter, name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })) => Ok(ServerCertVerified::assertion()),
            other => other,
        }?;
        *self.seen.lock().unwrap() = Some(end.clone().into_owned());
        Ok(verified)
    }
    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pgpass_matches_like_libpq() {
        let dir = std::env::temp_dir().join(format!("pgferry-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pgpass");
        std::fs::write(&file, "# comment\nother:5432:*:bob:nope\ndb.example:*:*:alice:s\\:cret\n*:*:*:*:fallback\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(pgpass_lookup_in(&file, "db.example", 6432, "*", "alice").as_deref(), Some("s:cret"));
        assert_eq!(pgpass_lookup_in(&file, "elsewhere", 5432, "*", "carol").as_deref(), Some("fallback"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(pgpass_lookup_in(&file, "db.example", 6432, "*", "alice"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
