//! Compiled components kept on disk between runs. A `.cwasm` is native code that wasmtime
//! runs without checking it, so nothing is loaded from the cache unless:
//! - the directory is ours and nobody else can write to it (created 0700; a directory that
//!   group or others can write, or that another user owns, is not used at all: components
//!   are then compiled in memory, with a warning naming it);
//! - the file is a regular file of ours (no symlink), and its sha256, bound to the
//!   component's sha256 and the engine's configuration, matches the `.sha256` kept beside
//!   it. A file that fails is compiled again and replaced, never run.
//!
//! Whoever runs as the same user can rewrite both files, as they could the binary itself.

use std::hash::{Hash, Hasher};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
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
        let dir = dir.and_then(|dir| match private_dir(&dir) {
            Ok(()) => Some(dir),
            Err(e) => {
                tracing::warn!("not using the plugin compile cache {}: {e:#}; plugins are compiled in memory on every run", dir.display());
                None
            }
        });
        CompileCache { dir, engine_key: format!("{:016x}", hasher.finish()) }
    }

    pub fn get_or_compile(&self, engine: &Engine, sha256: &str, bytes: &[u8]) -> wasmtime::Result<Component> {
        let Some(dir) = &self.dir else {
            return Component::new(engine, bytes);
        };
        let path = dir.join(format!("{sha256}-{}.cwasm", self.engine_key));
        let seal_path = path.with_extension("cwasm.sha256");
        if path.exists() && !seal_path.exists() {
            // Written before seals existed (or by a runner killed between the two writes).
            tracing::debug!("the cached compilation {} has no seal; compiling the plugin again", path.display());
        } else if path.exists() {
            match self.read_verified(&path, &seal_path, sha256) {
                // SAFETY: the bytes are what this user's runner wrote for this component and
                // engine configuration (their seal matched); wasmtime also refuses a `.cwasm`
                // of another engine configuration.
                Ok(compiled) => return unsafe { Component::deserialize(engine, &compiled) },
                Err(e) => tracing::warn!("ignoring the cached compilation {}: {e:#}; compiling the plugin again", path.display()),
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        // A cache that cannot be written only costs time; never fail the load for it.
        let seal = self.seal(sha256, &compiled);
        let _ = write_private(&path, &compiled).and_then(|()| write_private(&seal_path, seal.as_bytes()));
        // SAFETY: produced just above by this engine.
        unsafe { Component::deserialize(engine, &compiled) }
    }

    /// The sha256 of the compiled bytes, bound to the component and the engine, so a
    /// `.cwasm` copied over another plugin's name does not pass.
    fn seal(&self, sha256: &str, compiled: &[u8]) -> String {
        let mut hasher = Sha256::new();
        hasher.update(format!("pgferry compiled component\0{sha256}\0{}\0", self.engine_key));
        hasher.update(compiled);
        hex::encode(hasher.finalize())
    }

    fn read_verified(&self, path: &Path, seal_path: &Path, sha256: &str) -> anyhow::Result<Vec<u8>> {
        let compiled = read_own_file(path)?;
        let expected = read_own_file(seal_path).context("its seal cannot be read")?;
        if self.seal(sha256, &compiled).as_bytes() != expected.trim_ascii() {
            bail!("its sha256 does not match the seal written beside it (changed after it was written)");
        }
        Ok(compiled)
    }
}

/// Creates `dir` (0700) if needed and insists that it is a directory of ours that nobody
/// else can write to.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).context("cannot create it")?;
    }
    let meta = std::fs::symlink_metadata(dir).context("cannot read it")?;
    if !meta.is_dir() {
        bail!("it is not a directory (a symlink is not followed)");
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        bail!("it belongs to uid {}, not to this user (uid {uid})", meta.uid());
    }
    if meta.mode() & 0o022 != 0 {
        bail!("group or others can write to it (mode {:o}); run `chmod 700` on it", meta.mode() & 0o777);
    }
    Ok(())
}

/// Reads a regular file of ours, never through a symlink.
fn read_own_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).context("cannot open it")?;
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions.
    if !meta.is_file() || meta.uid() != unsafe { libc::geteuid() } || meta.mode() & 0o022 != 0 {
        bail!("it is not a regular file of this user that only this user can write");
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Writes through a fresh temporary file (0600) renamed over `path`.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    std::io::Write::write_all(&mut file, bytes)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)
}
