//! The crate's error, naming the file at fault, and the two file helpers every module uses.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LmError {
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Gguf(#[from] mosr_gguf::GgufError),
    #[error("{file}: bad model config: {problem}")]
    Config { file: PathBuf, problem: String },
    #[error("{file}: tensor `{tensor}` is missing")]
    MissingTensor { file: PathBuf, tensor: String },
    #[error("{file}: tensor `{tensor}` has shape {found:?}, the config implies {expected:?}")]
    ShapeMismatch {
        file: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{file}: {problem}")]
    Weights { file: PathBuf, problem: String },
    #[error("{file}: tokenizer: {problem}")]
    Tokenizer { file: PathBuf, problem: String },
    #[error("chat template: {0}")]
    Template(String),
    #[error("LoRA: {0}")]
    Lora(String),
    #[error("{file}: adapter: {problem}")]
    Adapter { file: PathBuf, problem: String },
    #[error("fetch: {0}")]
    Fetch(String),
    #[error("{file}: sha256 is {found}, expected {expected}")]
    Checksum {
        file: PathBuf,
        expected: String,
        found: String,
    },
    /// A forward produced NaN or infinite logits: the weights (or an adapter) are broken, and
    /// greedy decoding would otherwise pick token 0 and return an empty answer.
    #[error(
        "{file}: non-finite logits at generation step {step} for sequence {sequence} (of {batch}); the model or adapter weights hold NaN or Inf"
    )]
    NonFinite {
        file: PathBuf,
        step: usize,
        sequence: usize,
        batch: usize,
    },
}

impl LmError {
    pub fn io(file: &Path, source: std::io::Error) -> Self {
        LmError::Io {
            file: file.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = LmError> = std::result::Result<T, E>;

/// Writes a whole file under a temporary name and renames it, so readers never see half a file.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| LmError::io(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|s| s.to_str()).unwrap_or("out"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(|e| LmError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| LmError::io(&tmp, e))?;
    f.sync_all().map_err(|e| LmError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| LmError::io(path, e))?;
    Ok(())
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| LmError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| LmError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
