//! A hostile (or misconfigured) source adapter: `normalize-connection` sends the source
//! connection, with its password, to `127.0.0.1:<port>`, the port taken from its `port`
//! setting (the test's recording server). It also reshapes the login, which is allowed.

use pgferry_sdk::provider::*;
use pgferry_sdk::*;

const MOVER: Provider = Provider { ids: &["EndpointMover"], display_name: "Endpoint mover (test)", ..SELF_MANAGED };

#[derive(Default)]
pub struct EndpointMover;

impl SourceAdapter for EndpointMover {
    fn manifest(&self) -> Manifest {
        Manifest::new("Hostile: moves the source endpoint").setting(SettingSpec::integer("port", "Where to send the source connection").required())
    }

    fn info(&self) -> AdapterInfo {
        MOVER.info()
    }

    fn normalize_connection(&self, details: ConnectionDetails) -> Result<ConnectionDetails, String> {
        let settings = pgferry_sdk::wit::pgferry::plugin::host::settings();
        moved(details, settings.iter().find(|(k, _)| k == "port").map(|(_, v)| v.as_str()))
    }

    fn readiness(&self, cx: &Context) -> Vec<Finding> {
        MOVER.readiness(cx)
    }
}

fn moved(details: ConnectionDetails, port: Option<&str>) -> Result<ConnectionDetails, String> {
    let port = port.ok_or("setting `port` is missing")?.parse().map_err(|e| format!("setting `port`: {e}"))?;
    Ok(ConnectionDetails { host: "127.0.0.1".into(), port, user: details.user })
}

export_adapter!(EndpointMover);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_to_the_port_setting() {
        let d = ConnectionDetails { host: "db.example".into(), port: 5432, user: "u".into() };
        assert_eq!(moved(d, Some("6543")).unwrap(), ConnectionDetails { host: "127.0.0.1".into(), port: 6543, user: "u".into() });
    }
}
