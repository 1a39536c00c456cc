//! Where a config comes from: the file's text and name, `file:line:col` errors, and loading.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::Config;

/// A configuration error pointing at the place in the file that caused it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

/// Source text plus its name, to turn byte spans into `file:line:col` errors.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

impl Source {
    pub fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        let offset = span.map(|s| s.start).unwrap_or(0).min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = self.text[line_start..offset].chars().count() + 1;
        ConfigError {
            file: self.name.clone(),
            line,
            col,
            message: message.into(),
        }
    }
}

/// A parsed configuration together with the file it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub source: Source,
    /// Directory that relative paths in the file are resolved against.
    pub base_dir: PathBuf,
    /// Whether upstream host names are looked up (serving: `run`, reloads) or only checked for
    /// their form (reading the config: `check`, `explain`, `test`, `diff`, `openapi coverage`,
    /// which use no network).
    pub resolve_names: bool,
}

impl LoadedConfig {
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

/// Files read for a config (the config itself, jwks_files, certificates) are at most this big.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Read a regular file of at most `MAX_FILE_BYTES`. A FIFO, a device or a directory is refused
/// without blocking: the file is opened non-blocking and checked on the open descriptor, so a
/// swap between a check and the open cannot slip one in.
pub fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB",
            MAX_FILE_BYTES >> 20
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other("grew past the size limit while read"));
    }
    Ok(bytes)
}

/// Read and parse a file. Validation that needs more than the syntax happens in `compile`,
/// which reports through the same `Source`.
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let name = path.display().to_string();
    let cannot = |e: String| ConfigError {
        file: name.clone(),
        line: 1,
        col: 1,
        message: format!("cannot read config file: {e}"),
    };
    let bytes = read_regular(path).map_err(|e| cannot(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| cannot("not UTF-8".into()))?;
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    parse(Source { name, text }, base_dir)
}

pub fn parse(source: Source, base_dir: PathBuf) -> Result<LoadedConfig, ConfigError> {
    let config: Config = toml::from_str(&source.text)
        .map_err(|e| source.error(e.span(), e.message().trim().to_string()))?;
    Ok(LoadedConfig {
        config,
        source,
        base_dir,
        resolve_names: true,
    })
}

/// Where `run`, `check` and `explain` look for the config when `--config` is not given.
pub fn default_path() -> PathBuf {
    std::env::var_os("SCOPEGATE_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("config/scopegate.toml"))
}
