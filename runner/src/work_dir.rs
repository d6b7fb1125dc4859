//! A migration's private scratch directory (pg_dump archives and lists). It lives under a
//! shared directory such as `/tmp`, so it is made atomically, mode 0700, under a name
//! nobody can guess and never reused: a local user cannot plant a symlink or file there
//! for the runner to write through, nor read the dumps. It is removed when dropped; a
//! resume removes the one a killed runner left behind.

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
}

/// `pgferry-<migration id>-`: the names of one migration's work dirs start so.
pub fn prefix(migration_id: i64) -> String {
    format!("pgferry-{migration_id}-")
}

impl WorkDir {
    /// A new directory `<parent>/<prefix><random>`, mode 0700. `mkdir` fails on any existing
    /// path (a symlink included), so a name planted in advance is never used.
    pub fn create(parent: &Path, prefix: &str) -> Result<WorkDir> {
        let mut last_error = None;
        for _ in 0..8 {
            let path = parent.join(format!("{prefix}{}", random_suffix()?));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(WorkDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_error = Some(e),
                Err(e) => {
                    return Err(e).with_context(|| format!("creating the work directory {} (set TMPDIR to a writable directory)", path.display()));
                }
            }
        }
        Err(last_error.expect("the loop ran")).with_context(|| format!("no unused work directory name under {}", parent.display()))
    }

    /// Under `$TMPDIR` (else `/tmp`).
    pub fn create_in_temp(prefix: &str) -> Result<WorkDir> {
        Self::create(&std::env::temp_dir(), prefix)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory for database `db`'s files: its name hex-encoded, so that no database
    /// name (`..`, `/`, a name longer than a path component allows) is read as a path.
    pub fn database_dir(work_dir: &Path, db: &str) -> PathBuf {
        work_dir.join(format!("db-{}", hex::encode(db.as_bytes())))
    }

    /// Removes `path`, a work dir an earlier run of the same migration left (its runner was
    /// killed), when it is what it claims: named with `prefix`, a real directory (a symlink
    /// is not followed) and owned by this user. Returns whether it removed something.
    pub fn remove_stale(path: &Path, prefix: &str) -> Result<bool> {
        let named_so = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.len() > prefix.len());
        if !named_so {
            bail!("{} is not a work directory of this migration (its name does not start with {prefix:?}); left alone", path.display());
        }
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("inspecting the stale work directory {}", path.display())),
        };
        if !meta.file_type().is_dir() {
            bail!("{} is not a directory (a symlink or file took the work directory's name); left alone", path.display());
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        if meta.uid() != uid {
            bail!("{} belongs to uid {}, not to this user (uid {uid}); left alone", path.display(), meta.uid());
        }
        // remove_dir_all does not follow symlinks inside the tree.
        std::fs::remove_dir_all(path).with_context(|| format!("removing the stale work directory {}", path.display()))?;
        Ok(true)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!("could not remove the work directory {}: {e}", self.path.display());
        }
    }
}

/// 16 random hex digits from the kernel.
fn random_suffix() -> Result<String> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).context("reading /dev/urandom for a work directory name")?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pgferry-work-dir-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn is_private_and_removed_on_drop() {
        let parent = scratch("mode");
        let work = WorkDir::create(&parent, "pgferry-7-").unwrap();
        let meta = std::fs::symlink_metadata(work.path()).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        std::fs::write(work.path().join("pre-data.dump"), "x").unwrap();
        let path = work.path().to_path_buf();
        drop(work);
        assert!(!path.exists(), "dropped work dir is gone");
        std::fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn names_are_unpredictable() {
        let parent = scratch("names");
        let a = WorkDir::create(&parent, "pgferry-7-").unwrap();
        let b = WorkDir::create(&parent, "pgferry-7-").unwrap();
        assert_ne!(a.path(), b.path());
        let suffix = |w: &WorkDir| w.path().file_name().unwrap().to_str().unwrap().strip_prefix("pgferry-7-").unwrap().to_string();
        assert_eq!(suffix(&a).len(), 16);
        assert!(suffix(&a).chars().all(|c| c.is_ascii_hexdigit()));
        drop((a, b));
        std::fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn never_uses_or_removes_a_planted_symlink() {
        let parent = scratch("symlink");
        let victim = parent.join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("keep"), "precious").unwrap();
        // An attacker plants the name a stale dir would have.
        let planted = parent.join("pgferry-7-0123456789abcdef");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        assert!(WorkDir::remove_stale(&planted, "pgferry-7-").is_err());
        assert_eq!(std::fs::read_to_string(victim.join("keep")).unwrap(), "precious");
        assert!(std::fs::symlink_metadata(&planted).unwrap().file_type().is_symlink());
        // mkdir refuses an existing name: a planted path is never taken over.
        assert!(std::fs::DirBuilder::new().mode(0o700).create(&planted).is_err());
        // A directory of another migration (other prefix) is not touched.
        let other = WorkDir::create(&parent, "pgferry-8-").unwrap();
        assert!(WorkDir::remove_stale(other.path(), "pgferry-7-").is_err());
        assert!(other.path().is_dir());
        // A real stale dir of this migration goes, contents and all.
        let stale = parent.join("pgferry-7-fedcba9876543210");
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("pre-data.dump"), "old").unwrap();
        assert!(WorkDir::remove_stale(&stale, "pgferry-7-").unwrap());
        assert!(!stale.exists());
        assert!(!WorkDir::remove_stale(&stale, "pgferry-7-").unwrap(), "already gone");
        drop(other);
        std::fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn database_names_are_never_paths() {
        let base = Path::new("/w");
        for db in ["..", "../../etc", "a/b", "."] {
            let dir = WorkDir::database_dir(base, db);
            assert_eq!(dir.parent(), Some(base), "{db}");
            assert!(dir.file_name().unwrap().to_str().unwrap().chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        }
    }
}
