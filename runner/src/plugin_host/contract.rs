//! Reading what a component was built for, before wasmtime compiles it: a plugin built for
//! a contract this runner does not host gets a message naming its version and the hosted
//! ones instead of wasmtime's "function implementation is missing".
//!
//! The policy (docs/plugins.md, "Versioning"): a runner hosts every contract version it
//! knows, each `wit/since_vX.Y.Z/` folder, and exactly those. A component built for any
//! other version is refused, a newer patch included: while the contract is 0.x, any
//! release may add to it, and a component may rely on what was added.

use wasmparser::{Chunk, Encoding, Parser, Payload};

/// The newest contract version, the one the SDK builds for (`wit/since_v0.2.0`).
pub const CONTRACT_VERSION: Version = Version { major: 0, minor: 2, patch: 0 };

/// Every contract version this runner hosts, oldest first.
pub const HOSTED: &[Version] = &[Version { major: 0, minor: 1, patch: 0 }, CONTRACT_VERSION];

/// The hosted versions as a message names them: `0.1.0, 0.2.0`.
pub fn hosted_list() -> String {
    HOSTED.iter().map(Version::to_string).collect::<Vec<_>>().join(", ")
}

/// Which of the hosted contracts a component was built for: picks the bindings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Hosted {
    V0_1,
    V0_2,
}

const PACKAGE: &str = "pgferry:plugin";

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl Version {
    fn parse(s: &str) -> Option<Version> {
        let mut parts = s.split(['.', '-', '+']);
        Some(Version {
            major: parts.next()?.parse().ok()?,
            minor: parts.next()?.parse().ok()?,
            patch: parts.next()?.parse().ok()?,
        })
    }

    /// The bindings for this version, if this runner hosts it.
    pub fn hosted(&self) -> Option<Hosted> {
        match (self.major, self.minor, self.patch) {
            (0, 1, 0) => Some(Hosted::V0_1),
            (0, 2, 0) => Some(Hosted::V0_2),
            _ => None,
        }
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.major, self.minor, self.patch).cmp(&(other.major, other.minor, other.patch))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    ValidationRule,
    SourceAdapter,
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            World::ValidationRule => "validation-rule",
            World::SourceAdapter => "source-adapter",
        })
    }
}

/// What a component says about itself at its top level.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ComponentShape {
    pub world: World,
    pub contract: Version,
    #[serde(skip)]
    pub hosted: Hosted,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ShapeError {
    #[error("is not a WebAssembly file")]
    NotWasm,
    #[error("is a core WebAssembly module, not a component; build plugins with `cargo build --target wasm32-wasip2` (or wrap the module with `wasm-tools component new`)")]
    CoreModule,
    #[error("is not a valid WebAssembly component: {0}")]
    Malformed(String),
    #[error("exports neither `pgferry:plugin/rules` nor `pgferry:plugin/adapter`, so it is no pgferry plugin (exports: {0})")]
    NoPluginExport(String),
    #[error("was built for plugin contract {found}, newer than this runner knows (it hosts contracts {hosted}); upgrade pgferry to one that hosts {found}, or rebuild the plugin with a pgferry-sdk for one of {hosted}")]
    NewerContract { found: Version, hosted: String },
    #[error("was built for plugin contract {found}, which this runner does not host (it hosts contracts {hosted}); rebuild the plugin with a pgferry-sdk for one of those")]
    UnknownContract { found: Version, hosted: String },
}

/// Reads the top-level imports and exports (not those of nested modules) of a component.
pub fn inspect(bytes: &[u8]) -> Result<ComponentShape, ShapeError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(ShapeError::NotWasm);
    }
    let mut parser = Parser::new(0);
    let mut offset = 0;
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    loop {
        let chunk = parser
            .parse(&bytes[offset..], true)
            .map_err(|e| ShapeError::Malformed(e.message().to_string()))?;
        let Chunk::Parsed { consumed, payload } = chunk else {
            return Err(ShapeError::Malformed("truncated file".into()));
        };
        offset += consumed;
        match payload {
            Payload::Version { encoding: Encoding::Module, .. } => return Err(ShapeError::CoreModule),
            Payload::ModuleSection { unchecked_range, .. }
            | Payload::ComponentSection { unchecked_range, .. } => {
                // Nested modules carry their own imports; only the top level is the contract.
                offset += unchecked_range.len();
            }
            Payload::ComponentImportSection(reader) => {
                for import in reader {
                    let import = import.map_err(|e| ShapeError::Malformed(e.message().to_string()))?;
                    imports.push(import.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(|e| ShapeError::Malformed(e.message().to_string()))?;
                    exports.push(export.name.name.to_string());
                }
            }
            Payload::End(_) => break,
            _ => {}
        }
    }
    let (world, contract) = exports
        .iter()
        .find_map(|name| {
            let rest = name.strip_prefix(PACKAGE)?.strip_prefix('/')?;
            let (iface, version) = rest.split_once('@')?;
            let world = match iface {
                "rules" => World::ValidationRule,
                "adapter" => World::SourceAdapter,
                _ => return None,
            };
            Some((world, Version::parse(version)?))
        })
        .ok_or_else(|| ShapeError::NoPluginExport(exports.join(", ")))?;
    let hosted = check_version(contract)?;
    Ok(ComponentShape { world, contract, hosted, imports, exports })
}

/// The bindings for a component built for `contract`, or why it is refused: newer than every
/// hosted version of its line (`0.1.1`, `0.3.0` today), or a version that never was.
pub fn check_version(contract: Version) -> Result<Hosted, ShapeError> {
    if let Some(hosted) = contract.hosted() {
        return Ok(hosted);
    }
    let same_line = |v: &&Version| v.major == contract.major && (v.major > 0 || v.minor == contract.minor);
    let newer = contract > CONTRACT_VERSION || HOSTED.iter().filter(same_line).any(|v| *v < contract);
    Err(if newer {
        ShapeError::NewerContract { found: contract, hosted: hosted_list() }
    } else {
        ShapeError::UnknownContract { found: contract, hosted: hosted_list() }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_known_versions_are_hosted() {
        let v = |s| Version::parse(s).unwrap();
        assert_eq!(v("0.1.0").hosted(), Some(Hosted::V0_1));
        assert_eq!(v("0.2.0").hosted(), Some(Hosted::V0_2));
        // A newer patch may rely on what that release added: not hosted.
        assert_eq!(v("0.1.1").hosted(), None);
        assert_eq!(v("0.3.0").hosted(), None);
        assert_eq!(v("1.0.0").hosted(), None);
        assert_eq!(hosted_list(), "0.1.0, 0.2.0");
        assert!(v("0.1.1") < CONTRACT_VERSION && v("0.3.0") > CONTRACT_VERSION);
    }

    #[test]
    fn other_contract_versions_are_refused_with_the_hosted_ones() {
        let v = |s| Version::parse(s).unwrap();
        assert_eq!(
            check_version(v("0.3.0")).unwrap_err().to_string(),
            "was built for plugin contract 0.3.0, newer than this runner knows (it hosts contracts 0.1.0, 0.2.0); \
             upgrade pgferry to one that hosts 0.3.0, or rebuild the plugin with a pgferry-sdk for one of 0.1.0, 0.2.0"
        );
        // 0.1.1 was accepted silently by wasmtime's linker before this check.
        assert_eq!(check_version(v("0.1.1")).unwrap_err(), ShapeError::NewerContract { found: v("0.1.1"), hosted: "0.1.0, 0.2.0".into() });
        assert_eq!(
            check_version(v("0.0.3")).unwrap_err().to_string(),
            "was built for plugin contract 0.0.3, which this runner does not host (it hosts contracts 0.1.0, 0.2.0); \
             rebuild the plugin with a pgferry-sdk for one of those"
        );
        assert_eq!(check_version(v("0.1.0")), Ok(Hosted::V0_1));
    }

    #[test]
    fn rejects_non_wasm_and_core_modules() {
        assert_eq!(inspect(b"hello").unwrap_err(), ShapeError::NotWasm);
        // The smallest valid core module: magic + version 1.
        assert_eq!(inspect(b"\0asm\x01\0\0\0").unwrap_err(), ShapeError::CoreModule);
    }
}
