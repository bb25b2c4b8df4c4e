//! Run directories: one writer at a time, and no silent mixing of two runs.
//!
//! Every command that writes a run directory holds [`RunDir`] for its lifetime: an exclusive
//! lock on `.rlhf.lock` inside it (the operating system's file lock, released when the process
//! ends, however it ends), so a second writer fails at once and is told the holder's pid and
//! host. A directory that already holds a run needs `--resume` (continue it) or `--overwrite`
//! (clear it first); on resume, record files are cut back to what the checkpoint covers.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file inside a run directory.
pub const LOCK_FILE: &str = ".rlhf.lock";

/// What to do with a directory that already holds files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse it (the default: nothing is overwritten or appended to silently).
    Refuse,
    /// Keep it, to continue the run it holds.
    Resume,
    /// Remove what it holds and start over.
    Overwrite,
}

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path} is in use by another rlhf process ({holder}); wait for it to finish or choose another directory")]
    Locked { path: PathBuf, holder: String },
    #[error(
        "{path} already holds a run ({entries}); pass --resume to continue it or --overwrite to start over, or choose another directory"
    )]
    NotEmpty { path: PathBuf, entries: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunDirError + '_ {
    move |error| RunDirError::Io { path: path.to_path_buf(), error }
}

/// A run directory held by this process.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    /// Holds the lock until dropped (or the process ends).
    _lock: File,
}

impl RunDir {
    /// Creates `path` if needed, locks it, and applies `existing` to whatever it already holds.
    pub fn open(path: &Path, existing: Existing) -> Result<Self, RunDirError> {
        std::fs::create_dir_all(path).map_err(io(path))?;
        let lock_path = path.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                let holder =
                    if holder.trim().is_empty() { "unknown pid".to_string() } else { holder.trim().to_string() };
                return Err(RunDirError::Locked { path: path.to_path_buf(), holder });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        lock.set_len(0).map_err(io(&lock_path))?;
        lock.rewind().map_err(io(&lock_path))?;
        write!(lock, "pid {} on {host}", std::process::id()).map_err(io(&lock_path))?;
        lock.flush().map_err(io(&lock_path))?;

        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io(path))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().is_some_and(|n| n != LOCK_FILE))
            .collect();
        entries.sort();
        if !entries.is_empty() {
            match existing {
                Existing::Resume => {}
                Existing::Refuse => {
                    let names: Vec<String> = entries
                        .iter()
                        .take(4)
                        .filter_map(|p| p.file_name())
                        .map(|n| n.to_string_lossy().into_owned())
                        .collect();
                    let more =
                        if entries.len() > 4 { format!(" and {} more", entries.len() - 4) } else { String::new() };
                    return Err(RunDirError::NotEmpty {
                        path: path.to_path_buf(),
                        entries: format!("{}{more}", names.join(", ")),
                    });
                }
                Existing::Overwrite => {
                    for entry in entries {
                        let removed =
                            if entry.is_dir() { std::fs::remove_dir_all(&entry) } else { std::fs::remove_file(&entry) };
                        removed.map_err(io(&entry))?;
                    }
                }
            }
        }
        Ok(Self { path: path.to_path_buf(), _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

/// Keeps the lines of a JSONL record file for which `keep` holds (a run resumed from a
/// checkpoint drops the records written after it), rewriting the file atomically. A missing
/// file is left missing; a line that does not parse is dropped. Returns how many were dropped.
pub fn truncate_records(path: &Path, keep: impl Fn(&serde_json::Value) -> bool) -> Result<usize, RunDirError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(path)(e)),
    };
    let mut kept = String::new();
    let mut dropped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(value) if keep(&value) => {
                kept.push_str(line);
                kept.push('\n');
            }
            _ => dropped += 1,
        }
    }
    if dropped > 0 {
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut staged = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
        staged.write_all(kept.as_bytes()).map_err(io(path))?;
        staged.persist(path).map_err(|e| io(path)(e.error))?;
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_and_told_who_holds_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let first = RunDir::open(&dir, Existing::Refuse).unwrap();
        let err = RunDir::open(&dir, Existing::Resume).unwrap_err().to_string();
        assert!(
            err.contains("in use by another rlhf process") && err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        // Once released, the directory (holding only its lock file) is free again.
        RunDir::open(&dir, Existing::Refuse).unwrap();
    }

    #[test]
    fn a_directory_with_a_run_needs_resume_or_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        std::fs::create_dir_all(dir.join("checkpoints")).unwrap();
        std::fs::write(dir.join("metrics.jsonl"), "{}\n").unwrap();
        let err = RunDir::open(&dir, Existing::Refuse).unwrap_err().to_string();
        assert!(
            err.contains("already holds a run (checkpoints, metrics.jsonl)")
                && err.contains("--resume")
                && err.contains("--overwrite"),
            "{err}"
        );
        drop(RunDir::open(&dir, Existing::Resume).unwrap());
        assert!(dir.join("metrics.jsonl").exists(), "resume keeps the run");
        drop(RunDir::open(&dir, Existing::Overwrite).unwrap());
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from(LOCK_FILE)], "overwrite clears the run");
    }

    #[test]
    fn records_past_a_checkpoint_are_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("metrics.jsonl");
        std::fs::write(&path, "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n{\"step\":2}\n").unwrap();
        let dropped = truncate_records(&path, |v| v["step"].as_u64().is_some_and(|s| s <= 2)).unwrap();
        assert_eq!(dropped, 1);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"step\":1}\n{\"step\":2}\n{\"step\":2}\n");
        assert_eq!(truncate_records(&tmp.path().join("missing.jsonl"), |_| true).unwrap(), 0);
    }
}
