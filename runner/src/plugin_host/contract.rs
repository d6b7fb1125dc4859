//! Reading what a component was built for, before wasmtime compiles it: a plugin built for
//! another contract version gets a message naming both versions instead of wasmtime's
//! "function implementation is missing".

use wasmparser::{Chunk, Encoding, Parser, Payload};

/// The contract version this runner hosts (the `wit/since_v0.1.0` package).
pub const CONTRACT_VERSION: Version = Version { major: 0, minor: 1, patch: 0 };

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

    /// Semver compatibility as cargo reads it: `0.1.x` with `0.1.y`, `1.x` with `1.y`.
    pub fn is_compatible_with(&self, other: &Version) -> bool {
        if self.major == 0 { other.major == 0 && self.minor == other.minor } else { self.major == other.major }
    }

    /// How a compatible range is written: `0.1.x`.
    pub fn range(&self) -> String {
        if self.major == 0 { format!("0.{}.x", self.minor) } else { format!("{}.x", self.major) }
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
    #[error("was built for plugin contract {found}, but this runner supports {supported}; rebuild it with a pgferry-sdk for contract {supported}")]
    IncompatibleContract { found: Version, supported: String },
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
    if !CONTRACT_VERSION.is_compatible_with(&contract) {
        return Err(ShapeError::IncompatibleContract { found: contract, supported: CONTRACT_VERSION.range() });
    }
    Ok(ComponentShape { world, contract, imports, exports })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compatibility_follows_semver() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("0.1.0").is_compatible_with(&v("0.1.7")));
        assert!(!v("0.1.0").is_compatible_with(&v("0.2.0")));
        assert!(v("1.0.0").is_compatible_with(&v("1.4.0")));
        assert!(!v("1.0.0").is_compatible_with(&v("2.0.0")));
    }

    #[test]
    fn rejects_non_wasm_and_core_modules() {
        assert_eq!(inspect(b"hello").unwrap_err(), ShapeError::NotWasm);
        // The smallest valid core module: magic + version 1.
        assert_eq!(inspect(b"\0asm\x01\0\0\0").unwrap_err(), ShapeError::CoreModule);
    }
}
