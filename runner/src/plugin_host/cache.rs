//! Compiled components kept on disk between runs, keyed by the component's sha256 and the
//! engine's compatibility hash (a `.cwasm` from another wasmtime or configuration is refused
//! by wasmtime anyway; the key just avoids trying).

use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use wasmtime::component::Component;
use wasmtime::Engine;

pub struct CompileCache {
    dir: Option<PathBuf>,
    engine_key: String,
}

impl CompileCache {
    pub fn new(dir: Option<PathBuf>, engine: &Engine) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        CompileCache { dir, engine_key: format!("{:016x}", hasher.finish()) }
    }

    pub fn get_or_compile(&self, engine: &Engine, sha256: &str, bytes: &[u8]) -> wasmtime::Result<Component> {
        let Some(dir) = &self.dir else {
            return Component::new(engine, bytes);
        };
        let path = dir.join(format!("{sha256}-{}.cwasm", self.engine_key));
        if path.exists() {
            // SAFETY: the file was written by `Engine::precompile_component` of an engine
            // with the same compatibility hash into the user's own cache directory.
            if let Ok(component) = unsafe { Component::deserialize_file(engine, &path) } {
                return Ok(component);
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        // A cache that cannot be written only costs time; never fail the load for it.
        if std::fs::create_dir_all(dir).is_ok() {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, &compiled).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
        // SAFETY: produced just above by this engine.
        unsafe { Component::deserialize(engine, &compiled) }
    }
}
