//! Atomic file writes: a crash or a kill never leaves a half-written artifact under its final
//! name, so "the file exists" can safely mean "the stage finished writing it".

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary name in the same directory (rename is atomic only within one filesystem).
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "artifact".into());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Write `path` atomically: `write` fills a temporary file in the same directory, which is
/// fsynced and renamed over `path`; the directory is fsynced too (on Unix) so the rename
/// survives a power loss. Parent directories are created. On error the temporary is removed.
pub fn write_atomic<T>(path: &Path, write: impl FnOnce(&mut File) -> Result<T>) -> Result<T> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let value = write(&mut file)?;
        file.flush().map_err(|e| Error::io(&tmp, e))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        Ok(value)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    #[cfg(unix)]
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    result
}

/// [`write_atomic`] for a byte buffer.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |f| f.write_all(bytes).map_err(|e| Error::io(path, e)))
}
