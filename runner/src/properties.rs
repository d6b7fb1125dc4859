//! The `--properties` body, compatible with `az postgres flexible-server migration create
//! --properties`: keys are case-insensitive, `targetServerUserName` may stand at the top or
//! inside `SecretParameters`, unknown keys are warnings. Secrets never leave this module
//! except as [`Secret`], which does not serialise and prints as `***`.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

/// A password. Debug and Display hide it; it has no Serialize, so it cannot reach the store.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MigrationMode {
    Offline,
    Online,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[value(rename_all = "PascalCase")]
pub enum MigrationOption {
    Validate,
    Migrate,
    ValidateAndMigrate,
}

pub use crate::conn_config::SslMode;
use crate::conn_config::{without_password, ConnParams};

/// A server as the properties (or `--target`) name it.
#[derive(Clone, Debug, Default)]
pub struct Endpoint {
    /// What it says: host, port, user, and from a URI anything else libpq takes.
    pub params: ConnParams,
    /// What the user wrote, less any password (kept for `show`).
    pub spelled: String,
}

#[derive(Clone, Debug)]
pub struct Properties {
    pub source: Endpoint,
    pub source_password: Option<Secret>,
    pub target: Option<Endpoint>,
    pub target_user: Option<String>,
    pub target_password: Option<Secret>,
    pub dbs_to_migrate: Vec<String>,
    pub overwrite_dbs_in_target: bool,
    /// pgferry's own key `SetReplicaIdentity`: the user consents that an online migration
    /// gives tables without a key a replica identity on the source (USING a unique index
    /// when one fits, else FULL), restored when the migration ends.
    pub set_replica_identity: bool,
    /// pgferry's own key `AllowAdapterEndpointChange`: the user consents that the source
    /// adapter's `normalize-connection` sends the source connection, and its password, to
    /// another host or port than the properties name. Without it that is an error.
    pub allow_adapter_endpoint_change: bool,
    pub mode: Option<MigrationMode>,
    pub option: Option<MigrationOption>,
    pub source_type: String,
    pub ssl_mode: Option<SslMode>,
    /// Keys accepted for compatibility but not used by the runner (Azure resource ids).
    pub accepted: BTreeMap<String, Value>,
    pub warnings: Vec<String>,
}

/// Keys the cloud service takes that mean nothing to a local runner.
const ACCEPTED_UNUSED: &[&str] = &[
    "migrationruntimeresourceid",
    "targetdbserverresourceid",
    "migrationinstanceresourceid",
    "setupLogicalReplicationOnSourceDbIfNeeded",
    "startdatatimeutc",
    "triggercutover",
    "cancel",
    "cutover",
    "migrationwindowstarttimeinutc",
    "dbstocancelmigrationon",
    "dbstotriggercutoveron",
];

impl Properties {
    pub fn from_file(path: &std::path::Path) -> Result<Properties> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the properties file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("properties file {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Properties> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            anyhow::anyhow!("is not valid JSON: {e} (expected {{\"properties\": {{…}}}} as `az postgres flexible-server migration create --properties` takes)")
        })?;
        let Value::Object(top) = value else { bail!("must be a JSON object") };
        let mut top = lowercase_keys(top);
        let body = match top.remove("properties") {
            Some(Value::Object(body)) => lowercase_keys(body),
            Some(_) => bail!("`properties` must be an object"),
            None => top,
        };
        Self::from_body(body)
    }

    fn from_body(mut body: Map<String, Value>) -> Result<Properties> {
        let mut warnings = Vec::new();
        let mut secrets = match body.remove("secretparameters") {
            Some(Value::Object(m)) => lowercase_keys(m),
            Some(_) => bail!("`SecretParameters` must be an object"),
            None => Map::new(),
        };
        let mut admin = match secrets.remove("admincredentials") {
            Some(Value::Object(m)) => lowercase_keys(m),
            Some(_) => bail!("`SecretParameters.AdminCredentials` must be an object"),
            None => Map::new(),
        };
        let source_password = take_string(&mut admin, "sourceserverpassword")?.map(Secret::new);
        let target_password = take_string(&mut admin, "targetserverpassword")?.map(Secret::new);
        for key in admin.keys() {
            warnings.push(format!("unknown key `SecretParameters.AdminCredentials.{key}` ignored"));
        }
        let target_user = match take_string(&mut body, "targetserverusername")? {
            Some(u) => Some(u),
            None => take_string(&mut secrets, "targetserverusername")?,
        };
        let source_user = match take_string(&mut body, "sourceserverusername")? {
            Some(u) => Some(u),
            None => take_string(&mut secrets, "sourceserverusername")?,
        };
        for key in secrets.keys() {
            warnings.push(format!("unknown key `SecretParameters.{key}` ignored"));
        }

        let source_id = take_string(&mut body, "sourcedbserverresourceid")?
            .context("`SourceDBServerResourceId` is missing: give the source as \"host:port@user\"")?;
        let source_fqdn = take_string(&mut body, "sourcedbserverfullyqualifieddomainname")?;
        let mut source = parse_source(&source_id, source_fqdn.as_deref())?;
        if source_user.is_some() {
            source.params.user = source_user;
        }
        // A password written into the URI counts when no other is given, and goes no further.
        let source_password = source_password.or(source.params.password.take());
        let target = take_string(&mut body, "targetdbserverfullyqualifieddomainname")?
            .map(|t| parse_endpoint(&t))
            .transpose()?;

        let dbs_to_migrate = match body.remove("dbstomigrate") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => bail!("`DBsToMigrate` must hold database names, found {other}"),
                })
                .collect::<Result<_>>()?,
            Some(other) => bail!("`DBsToMigrate` must be a list of database names, found {other}"),
        };
        let flag = |body: &mut serde_json::Map<String, Value>, key: &str, spelled: &str| match body.remove(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(b),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
            Some(other) => Err(anyhow::anyhow!("`{spelled}` must be \"true\" or \"false\", found {other}")),
        };
        let overwrite_dbs_in_target = flag(&mut body, "overwritedbsintarget", "OverwriteDBsInTarget")?;
        let set_replica_identity = flag(&mut body, "setreplicaidentity", "SetReplicaIdentity")?;
        let allow_adapter_endpoint_change = flag(&mut body, "allowadapterendpointchange", "AllowAdapterEndpointChange")?;
        let mode = take_string(&mut body, "migrationmode")?
            .map(|m| match m.to_ascii_lowercase().as_str() {
                "offline" => Ok(MigrationMode::Offline),
                "online" => Ok(MigrationMode::Online),
                _ => bail!("`MigrationMode` {m:?} is not one of Offline, Online"),
            })
            .transpose()?;
        let option = take_string(&mut body, "migrationoption")?
            .map(|m| match m.to_ascii_lowercase().as_str() {
                "validate" => Ok(MigrationOption::Validate),
                "migrate" => Ok(MigrationOption::Migrate),
                "validateandmigrate" => Ok(MigrationOption::ValidateAndMigrate),
                _ => bail!("`MigrationOption` {m:?} is not one of Validate, Migrate, ValidateAndMigrate"),
            })
            .transpose()?;
        let source_type = take_string(&mut body, "sourcetype")?.unwrap_or_else(|| "OnPremises".into());
        let ssl_mode = take_string(&mut body, "sslmode")?
            .map(|s| SslMode::parse(&s).with_context(|| format!("`sslMode` {s:?} is not one of Prefer, Require, VerifyCA, VerifyFull")))
            .transpose()?;

        let mut accepted = BTreeMap::new();
        for (key, value) in body {
            if ACCEPTED_UNUSED.iter().any(|k| k.eq_ignore_ascii_case(&key)) {
                accepted.insert(key, value);
            } else {
                warnings.push(format!("unknown key `{key}` ignored"));
            }
        }
        Ok(Properties {
            source,
            source_password,
            target,
            target_user,
            target_password,
            dbs_to_migrate,
            overwrite_dbs_in_target,
            set_replica_identity,
            allow_adapter_endpoint_change,
            mode,
            option,
            source_type,
            ssl_mode,
            accepted,
            warnings,
        })
    }
}

fn lowercase_keys(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect()
}

fn take_string(map: &mut Map<String, Value>, key: &str) -> Result<Option<String>> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => bail!("`{key}` must be a string, found {other}"),
    }
}

/// `SourceDBServerResourceId`: `host[:port][@user]`, a postgres URI, or an Azure resource
/// id (then the host comes from `SourceDbServerFullyQualifiedDomainName`).
fn parse_source(id: &str, fqdn: Option<&str>) -> Result<Endpoint> {
    let mut endpoint = if id.starts_with("/subscriptions/") {
        let name = id.rsplit('/').next().unwrap_or_default();
        let host = fqdn.with_context(|| {
            format!("`SourceDBServerResourceId` is a cloud resource id (`/subscriptions/…`, server {name}); set `SourceDbServerFullyQualifiedDomainName` to the host to reach it at")
        })?;
        let mut e = parse_endpoint(host)?;
        e.spelled = id.to_string();
        return Ok(e);
    } else {
        parse_endpoint(id)?
    };
    // The custom FQDN/IP overrides the host used to reach the source (private DNS).
    if let Some(fqdn) = fqdn {
        let over = parse_endpoint(fqdn)?;
        endpoint.params.host = over.params.host;
        endpoint.params.port = over.params.port.or(endpoint.params.port);
    }
    Ok(endpoint)
}

/// `host[:port][@user]` or a libpq URI (`postgresql://user@host:port/db?sslmode=verify-full`).
pub fn parse_endpoint(s: &str) -> Result<Endpoint> {
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        // Messages and `show` name the URI without its password.
        let spelled = without_password(s);
        let params = ConnParams::parse_uri(s)?;
        if params.host.is_none() {
            bail!("{spelled:?} names no host");
        }
        return Ok(Endpoint { params, spelled });
    }
    let spelled = s.to_string();
    let (hostport, user) = match s.rsplit_once('@') {
        Some((hp, u)) if !u.is_empty() => (hp, Some(u.to_string())),
        _ => (s, None),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.contains(']') || h.ends_with(']') => {
            let port = p.parse().with_context(|| format!("{p:?} in {s:?} is not a port number"))?;
            (h.trim_matches(['[', ']']).to_string(), Some(port))
        }
        _ => (hostport.to_string(), None),
    };
    if host.is_empty() {
        bail!("{s:?} names no host (expected host:port@user)");
    }
    Ok(Endpoint { params: ConnParams { host: Some(host), port, user, ..Default::default() }, spelled })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_cloud_service_body_case_insensitively() {
        let p = Properties::parse(
            r#"{"properties": {
              "SourceDBServerResourceId": "source.example.com:5433@admin",
              "SecretParameters": {"AdminCredentials": {"SourceServerPassword": "s3", "TargetServerPassword": "t3"},
                                   "TargetServerUserName": "tadmin"},
              "DBsToMigrate": ["ticketdb", "inventorydb"],
              "OverwriteDBsInTarget": "true",
              "MigrationMode": "Online",
              "sourceType": "OnPremises",
              "sslMode": "VerifyFull",
              "migrationRuntimeResourceId": "/subscriptions/x/runtime",
              "surprise": 1
            }}"#,
        )
        .unwrap();
        assert_eq!(p.source.params.host.as_deref(), Some("source.example.com"));
        assert_eq!(p.source.params.port, Some(5433));
        assert_eq!(p.source.params.user.as_deref(), Some("admin"));
        assert_eq!(p.source_password.as_ref().unwrap().expose(), "s3");
        assert_eq!(p.target_user.as_deref(), Some("tadmin"));
        assert_eq!(p.dbs_to_migrate, ["ticketdb", "inventorydb"]);
        assert!(p.overwrite_dbs_in_target);
        assert_eq!(p.mode, Some(MigrationMode::Online));
        assert_eq!(p.ssl_mode, Some(SslMode::VerifyFull));
        assert!(p.accepted.contains_key("migrationruntimeresourceid"));
        assert_eq!(p.warnings, ["unknown key `surprise` ignored"]);
        assert!(!p.allow_adapter_endpoint_change);
        assert_eq!(format!("{:?}", p.source_password), "Some(***)");
        let p = Properties::parse(r#"{"properties": {"SourceDBServerResourceId": "h", "AllowAdapterEndpointChange": "true"}}"#).unwrap();
        assert!(p.allow_adapter_endpoint_change);
    }

    #[test]
    fn names_what_is_wrong() {
        let err = |t: &str| format!("{:#}", Properties::parse(t).unwrap_err());
        assert!(err("{not json").contains("is not valid JSON"));
        assert!(err(r#"{"properties": {}}"#).contains("SourceDBServerResourceId"));
        assert!(err(r#"{"properties": {"SourceDBServerResourceId": "h:x"}}"#).contains("not a port number"));
        assert!(err(r#"{"properties": {"SourceDBServerResourceId": "h", "sslMode": "Sometimes"}}"#).contains("sslMode"));
        assert!(err(r#"{"properties": {"SourceDBServerResourceId": "/subscriptions/1/servers/pg1"}}"#)
            .contains("SourceDbServerFullyQualifiedDomainName"));
    }

    #[test]
    fn a_password_in_a_uri_is_used_but_not_kept() {
        let p = Properties::parse(r#"{"properties": {"SourceDBServerResourceId": "postgresql://alice:s3cr%40t@db.example:6432/app?sslmode=require"}}"#).unwrap();
        assert_eq!(p.source_password.as_ref().map(Secret::expose), Some("s3cr@t"));
        assert_eq!(p.source.spelled, "postgresql://alice@db.example:6432/app?sslmode=require");
        assert_eq!((p.source.params.host.as_deref(), p.source.params.port, p.source.params.user.as_deref()), (Some("db.example"), Some(6432), Some("alice")));
        // The properties' own password wins over the URI's.
        let p = Properties::parse(
            r#"{"properties": {"SourceDBServerResourceId": "postgres://alice:uri-pw@h/app?password=q-pw&application_name=x",
                "SecretParameters": {"AdminCredentials": {"SourceServerPassword": "given"}}}}"#,
        )
        .unwrap();
        assert_eq!(p.source_password.as_ref().map(Secret::expose), Some("given"));
        assert_eq!(p.source.spelled, "postgres://alice@h/app?application_name=x");
        assert_eq!(without_password("postgres://h?password=x"), "postgres://h");
        // Every libpq sslmode is taken in a URI (tokio-postgres alone knows three).
        let target = parse_endpoint("postgresql://bob@db.example/app?sslmode=verify-full&sslrootcert=/ca.pem").unwrap();
        assert_eq!((target.params.sslmode, target.params.sslrootcert.as_deref()), (Some(SslMode::VerifyFull), Some("/ca.pem")));
        let err = format!("{:#}", parse_endpoint("postgres://u:topsecret@h/db?sslmode=sometimes").unwrap_err());
        assert!(!err.contains("topsecret"), "{err}");
    }

    #[test]
    fn fqdn_overrides_the_source_host() {
        let p = Properties::parse(
            r#"{"properties": {"SourceDBServerResourceId": "pg1.internal:5432@me", "SourceDbServerFullyQualifiedDomainName": "10.1.2.3"}}"#,
        )
        .unwrap();
        assert_eq!((p.source.params.host.as_deref(), p.source.params.port), (Some("10.1.2.3"), Some(5432)));
    }
}
