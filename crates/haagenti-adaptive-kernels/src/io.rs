//! Files that cannot hurt: inputs that must be regular files of bounded size, and outputs that
//! are written atomically and never replace what they should not.
//!
//! - [`check_input`] refuses anything but a regular file (a FIFO would block forever, a device
//!   would read forever) and files above a size limit; [`read_capped`] does the same and reads
//!   the file, never more than the limit even if the file grows meanwhile.
//! - [`check_output`] resolves an output path before any work is done: `-`, directories,
//!   devices, FIFOs, sockets and dangling symbolic links are refused, and so is any output that
//!   *is* one of the inputs, compared by identity (device and inode after following links, so
//!   `./model`, an absolute path, a symbolic link and a hard link are all recognised).
//! - [`AtomicFile`] writes beside the target under a hidden temporary name
//!   (`.{target}.{pid}.{nonce}.haagenti-partial`) and renames it into place on
//!   [`commit`](AtomicFile::commit). The file is created with the mode any new file gets under
//!   the process's umask (not `0600`). Dropping it, or any error, removes the temporary file; a
//!   program that wants the same on SIGINT, SIGTERM or SIGHUP calls
//!   [`remove_live_temporaries`] from its signal handler thread (the library installs no handler
//!   itself, as a library should not). A new [`AtomicFile`] for a target removes that target's
//!   temporaries left by processes that no longer run (on Linux, where `/proc` says which do).
//!
//! # Examples
//!
//! ```
//! use std::io::Write as _;
//! use haagenti_adaptive_kernels::io::{AtomicFile, IoError, check_output, read_capped};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let input = dir.path().join("profile.json");
//! std::fs::write(&input, b"{}")?;
//! assert_eq!(read_capped(&input, 1024)?, b"{}");
//! assert!(matches!(read_capped(&input, 1), Err(IoError::TooLarge { .. })));
//!
//! // The input under another spelling is refused as an output.
//! let alias = dir.path().join(".").join("profile.json");
//! assert!(matches!(check_output(&alias, &[&input]), Err(IoError::OutputIsInput { .. })));
//! assert!(check_output(dir.path(), &[]).is_err()); // a directory
//!
//! let target = check_output(&dir.path().join("out.bin"), &[&input])?;
//! let mut file = AtomicFile::create(&target)?;
//! file.file().write_all(b"done")?;
//! file.commit()?;
//! assert_eq!(std::fs::read(dir.path().join("out.bin"))?, b"done");
//! # Ok(())
//! # }
//! ```

use std::fs::{File, Metadata, OpenOptions};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The suffix of every temporary file [`AtomicFile`] creates.
pub const TEMP_SUFFIX: &str = ".haagenti-partial";

/// Errors of checking, reading and writing files.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The operating system refused an operation.
    #[error("{action} {}", path.display())]
    Os {
        /// What was being done (`"cannot read"`, `"cannot create"`, ...).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An input that is not a regular file (a directory, FIFO, device or socket).
    #[error("{} is {kind}, not a regular file", path.display())]
    InputNotRegular {
        /// The input.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// An input larger than the limit for its kind.
    #[error("{} is {len} bytes, more than the limit of {limit} bytes", path.display())]
    TooLarge {
        /// The input.
        path: PathBuf,
        /// Its length (at least; it may have grown).
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// `-` was given as an output: this output is a binary file, not a stream.
    #[error("`-` (standard output) cannot take this output; name a file")]
    StandardOutput,
    /// The output exists and is not a regular file.
    #[error("the output {} is {kind}; name a regular file or a new one", path.display())]
    OutputNotRegular {
        /// The output.
        path: PathBuf,
        /// What it is (a directory, a device, ...).
        kind: &'static str,
    },
    /// The output's directory does not exist or is not a directory.
    #[error("the directory of the output {} does not exist", path.display())]
    OutputDirectoryMissing {
        /// The output.
        path: PathBuf,
    },
    /// The output is one of the inputs under another name.
    #[error("the output {} is the input {}; pass another --out", output.display(), input.display())]
    OutputIsInput {
        /// The output as given.
        output: PathBuf,
        /// The input as given.
        input: PathBuf,
    },
}

/// `Result` with [`IoError`].
pub type Result<T> = std::result::Result<T, IoError>;

fn os(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IoError {
    let path = path.to_path_buf();
    move |source| IoError::Os {
        action,
        path,
        source,
    }
}

/// What a non-regular file is, in words.
fn kind(meta: &Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_char_device() || ft.is_block_device() {
            return "a device";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    "not a regular file"
}

/// Checks that `path` is a regular file (following links) of at most `limit` bytes, before it is
/// opened: opening a FIFO blocks until a writer comes, and a device reads without end.
///
/// # Errors
///
/// [`IoError::Os`] when it cannot be examined, [`IoError::InputNotRegular`],
/// [`IoError::TooLarge`].
pub fn check_input(path: &Path, limit: u64) -> Result<Metadata> {
    let meta = std::fs::metadata(path).map_err(os("cannot read", path))?;
    if !meta.is_file() {
        return Err(IoError::InputNotRegular {
            path: path.to_path_buf(),
            kind: kind(&meta),
        });
    }
    if meta.len() > limit {
        return Err(IoError::TooLarge {
            path: path.to_path_buf(),
            len: meta.len(),
            limit,
        });
    }
    Ok(meta)
}

/// Reads a whole regular file of at most `limit` bytes: the length is checked first, and the
/// read stops past the limit, so a file that grows while it is read cannot exhaust memory.
///
/// # Errors
///
/// As [`check_input`]; [`IoError::TooLarge`] also when the file grew past the limit while read.
pub fn read_capped(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let meta = check_input(path, limit)?;
    let file = File::open(path).map_err(os("cannot read", path))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(os("cannot read", path))?;
    if bytes.len() as u64 > limit {
        return Err(IoError::TooLarge {
            path: path.to_path_buf(),
            len: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// [`read_capped`] as UTF-8 text.
///
/// # Errors
///
/// As [`read_capped`]; [`IoError::Os`] with kind `InvalidData` when the bytes are not UTF-8.
pub fn read_capped_to_string(path: &Path, limit: u64) -> Result<String> {
    String::from_utf8(read_capped(path, limit)?).map_err(|e| IoError::Os {
        action: "cannot read as UTF-8 text",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

/// An output path that [`check_output`] accepted: links resolved, the directory there, nothing
/// but a regular file (or nothing) in the way, and none of the inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputPath {
    resolved: PathBuf,
}

impl OutputPath {
    /// Where the output will be written (links resolved).
    pub fn path(&self) -> &Path {
        &self.resolved
    }
}

/// Two metadata describe the same file.
fn same_file(a: &Metadata, b: &Metadata, pa: &Path, pb: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let _ = (pa, pb);
        a.dev() == b.dev() && a.ino() == b.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = (a, b);
        matches!(
            (std::fs::canonicalize(pa), std::fs::canonicalize(pb)),
            (Ok(x), Ok(y)) if x == y
        )
    }
}

/// Checks an output path before any work: see the [module docs](self).
///
/// # Errors
///
/// [`IoError::StandardOutput`] for `-`; [`IoError::OutputNotRegular`] for a directory, device,
/// FIFO, socket or dangling link; [`IoError::OutputDirectoryMissing`];
/// [`IoError::OutputIsInput`] when it is one of `inputs`; [`IoError::Os`] when it cannot be
/// examined.
pub fn check_output(output: &Path, inputs: &[&Path]) -> Result<OutputPath> {
    if output.as_os_str() == "-" {
        return Err(IoError::StandardOutput);
    }
    let resolved = match std::fs::symlink_metadata(output) {
        Ok(_) => {
            let meta = std::fs::metadata(output).map_err(|_| IoError::OutputNotRegular {
                path: output.to_path_buf(),
                kind: "a symbolic link to nothing",
            })?;
            if !meta.is_file() {
                return Err(IoError::OutputNotRegular {
                    path: output.to_path_buf(),
                    kind: kind(&meta),
                });
            }
            for input in inputs {
                if let Ok(im) = std::fs::metadata(input)
                    && same_file(&meta, &im, output, input)
                {
                    return Err(IoError::OutputIsInput {
                        output: output.to_path_buf(),
                        input: input.to_path_buf(),
                    });
                }
            }
            std::fs::canonicalize(output).map_err(os("cannot resolve", output))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let missing = || IoError::OutputDirectoryMissing {
                path: output.to_path_buf(),
            };
            let name = output
                .file_name()
                .ok_or_else(|| IoError::OutputNotRegular {
                    path: output.to_path_buf(),
                    kind: "a directory",
                })?;
            let dir = match output.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let dir = std::fs::canonicalize(dir).map_err(|_| missing())?;
            if !dir.is_dir() {
                return Err(missing());
            }
            dir.join(name)
        }
        Err(e) => return Err(os("cannot examine", output)(e)),
    };
    Ok(OutputPath { resolved })
}

/// Temporary files alive in this process, for [`remove_live_temporaries`].
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    // A panic while the lock was held leaves a valid list: recover it.
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes every temporary file of a live [`AtomicFile`] in this process. Meant for a signal
/// handler's thread just before the process exits (a thread of `signal-hook`'s iterator, say,
/// not the signal context itself: this takes a lock).
///
/// Returns how many were removed.
pub fn remove_live_temporaries() -> usize {
    let mut list = live();
    let removed = list
        .iter()
        .filter(|p| std::fs::remove_file(p).is_ok())
        .count();
    list.clear();
    removed
}

/// A file being written beside its target, renamed into place on [`commit`](Self::commit).
///
/// Dropped without a commit, it removes its temporary file.
#[derive(Debug)]
pub struct AtomicFile {
    file: File,
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

/// Whether process `pid` is running, where the platform says; `None` where it does not.
fn process_alive(pid: u32) -> Option<bool> {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return None;
    }
    Some(proc.join(pid.to_string()).exists())
}

/// The pid in a temporary name `.{target}.{pid}.{nonce}.haagenti-partial`, if it is one of
/// `target`'s.
fn temp_owner(file_name: &str, target_name: &str) -> Option<u32> {
    let rest = file_name
        .strip_prefix('.')?
        .strip_prefix(target_name)?
        .strip_prefix('.')?
        .strip_suffix(TEMP_SUFFIX)?;
    let (pid, nonce) = rest.split_once('.')?;
    nonce.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Removes `target`'s temporaries whose process no longer runs; returns how many.
fn remove_stale_temporaries(dir: &Path, target_name: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let me = std::process::id();
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(|n| temp_owner(n, target_name)) else {
                return false;
            };
            pid != me && process_alive(pid) == Some(false)
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

impl AtomicFile {
    /// Creates the temporary file beside `target` (mode from the umask), after removing that
    /// target's stale temporaries.
    ///
    /// # Errors
    ///
    /// [`IoError::Os`] when the file cannot be created.
    pub fn create(target: &OutputPath) -> Result<Self> {
        static NONCE: AtomicU64 = AtomicU64::new(0);
        let target = target.path().to_path_buf();
        let dir = target.parent().unwrap_or(Path::new("."));
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        remove_stale_temporaries(dir, &name);
        let pid = std::process::id();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut attempt = 0;
        loop {
            let nonce = seed.wrapping_add(NONCE.fetch_add(1, Ordering::Relaxed));
            let temp = dir.join(format!(".{name}.{pid}.{nonce}{TEMP_SUFFIX}"));
            // Registered before it exists, so a signal arriving between the two removes it.
            live().push(temp.clone());
            // `create_new` with the default mode: 0o666 less the umask, as any new file.
            match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Ok(file) => {
                    return Ok(Self {
                        file,
                        temp,
                        target,
                        committed: false,
                    });
                }
                Err(e) => {
                    live().retain(|p| p != &temp);
                    attempt += 1;
                    if e.kind() != std::io::ErrorKind::AlreadyExists || attempt > 16 {
                        return Err(os("cannot create a temporary file in", dir)(e));
                    }
                }
            }
        }
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// The temporary file's path.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// The target's path.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Syncs the file and renames it to the target, replacing the regular file there if any.
    ///
    /// # Errors
    ///
    /// [`IoError::Os`] when syncing or renaming fails; the temporary file is then removed.
    pub fn commit(mut self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(os("cannot sync", &self.temp))?;
        std::fs::rename(&self.temp, &self.target)
            .map_err(os("cannot rename the temporary file to", &self.target))?;
        self.committed = true;
        live().retain(|p| p != &self.temp);
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
            live().retain(|p| p != &self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_parse_back_to_their_owner() {
        assert_eq!(
            temp_owner(".m.gguf.123.456.haagenti-partial", "m.gguf"),
            Some(123)
        );
        assert_eq!(
            temp_owner(".m.gguf.123.456.haagenti-partial", "n.gguf"),
            None
        );
        assert_eq!(temp_owner(".m.gguf.x.456.haagenti-partial", "m.gguf"), None);
        assert_eq!(temp_owner("m.gguf", "m.gguf"), None);
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        // u32::MAX is above any pid Linux hands out (the maximum is 2^22).
        let stale = dir
            .path()
            .join(format!(".m.gguf.{}.7{TEMP_SUFFIX}", u32::MAX));
        let mine = dir
            .path()
            .join(format!(".m.gguf.{}.7{TEMP_SUFFIX}", std::process::id()));
        let other_target = dir
            .path()
            .join(format!(".x.gguf.{}.7{TEMP_SUFFIX}", u32::MAX));
        for p in [&stale, &mine, &other_target] {
            std::fs::write(p, b"x").unwrap();
        }
        let target = check_output(&dir.path().join("m.gguf"), &[]).unwrap();
        let file = AtomicFile::create(&target).unwrap();
        if process_alive(1).is_some() {
            assert!(!stale.exists());
        }
        assert!(mine.exists() && other_target.exists());
        let temp = file.temp_path().to_path_buf();
        assert!(temp.exists());
        drop(file);
        assert!(!temp.exists());
    }
}
