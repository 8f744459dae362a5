//! The state file: every refreshed token persisted atomically (temporary file, fsync, rename, fsync of the
//! directory) with mode 0600, before it is put in the cell; read first at start.

use std::{
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::secret::Token;

/// What is persisted.
#[derive(Debug, Clone)]
pub(crate) struct Persisted {
    pub(crate) token: Token,
    /// When the upstream last confirmed the token (its revoke deadline counts from here).
    pub(crate) confirmed_at: SystemTime,
    pub(crate) session_started_at: Option<SystemTime>,
    /// Fingerprint of the file or environment token this one was refreshed from (which token the chain of refreshes started from).
    pub(crate) origin: Option<String>,
    /// The chain's write count (cluster mode's `state` generation); 0 in files written before it was recorded.
    pub(crate) generation: u64,
}

#[derive(Serialize, Deserialize)]
struct Record {
    token: String,
    confirmed_at_ms: u64,
    session_started_at_ms: Option<u64>,
    /// Absent in files written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<String>,
    #[serde(default)]
    generation: u64,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The directory the state file lives in (`.` for a bare file name).
fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Whether `path` can be the state file: not a directory, and its directory, if it exists, a directory. A
/// missing directory is allowed ([`prepare`] creates it). The reason, for `check-config` and start-up.
pub(crate) fn check_place(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err(format!("{} is a directory; name a file in it", path.display()));
    }
    let dir = dir_of(path);
    if dir.exists() && !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    Ok(())
}

/// Before the first write: [`check_place`], create a missing directory (mode 0700), remove temporary files an
/// interrupted write left behind (each holds a token), and check that a file can be created there, so that a
/// state file that cannot be written stops the start instead of every refresh. Blocking; at start only.
pub(crate) fn prepare(path: &Path) -> Result<(), String> {
    check_place(path)?;
    let dir = dir_of(path);
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create the directory {}: {e}", dir.display()))?;
    }
    let name = file_name(path);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let leftover = entry.file_name().to_str().is_some_and(|n| is_tmp_name(n, &name));
        // Only regular files: a symlink there is not ours to follow or remove.
        if leftover && entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let (probe, _) = create_fresh(dir, &name).map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// The temporary file a write of state file `name` uses: `.{name}.{16 hex digits}.tmp`.
fn tmp_name(name: &str, random: u64) -> String {
    format!(".{name}.{random:016x}.tmp")
}

/// Whether `file` is a temporary file of state file `name`: [`tmp_name`]'s shape, or `.{name}.tmp`, the fixed
/// name earlier versions used.
fn is_tmp_name(file: &str, name: &str) -> bool {
    let Some(middle) = file
        .strip_prefix('.')
        .and_then(|f| f.strip_prefix(name))
        .and_then(|f| f.strip_suffix(".tmp"))
    else {
        return false;
    };
    middle.is_empty()
        || middle
            .strip_prefix('.')
            .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Write atomically and durably, mode 0600. Blocking: call from `spawn_blocking`.
pub(crate) fn write(path: &Path, state: &Persisted) -> std::io::Result<()> {
    let record = Record {
        token: state.token.expose().to_owned(),
        confirmed_at_ms: ms(state.confirmed_at),
        session_started_at_ms: state.session_started_at.map(ms),
        origin: state.origin.clone(),
        generation: state.generation,
    };
    let json = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
    let dir = dir_of(path);
    let name = file_name(path);
    // A fresh temporary file, never one that is already there: in a directory others can write to, a file or
    // symlink planted under a predictable name would otherwise receive the token (or keep its wider mode).
    let (tmp, mut file) = create_fresh(dir, &name)?;
    let written = file
        .write_all(&json)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Create `.{name}.{random}.tmp` in `dir` with mode 0600, failing rather than opening anything that exists
/// (`O_CREAT | O_EXCL`, which also refuses a symlink).
fn create_fresh(dir: &Path, name: &str) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    let mut attempts = 0;
    loop {
        let tmp = dir.join(tmp_name(name, rand::random()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 3 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Read the state file. `Ok(None)` when there is none. A file holding a bare token (written by hand) works too.
pub(crate) fn read(path: &Path) -> Result<Option<Persisted>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or(UNIX_EPOCH);
    let (token, confirmed_at, session_started_at, origin, generation) = match serde_json::from_str::<Record>(&text) {
        Ok(r) => (
            r.token,
            at(r.confirmed_at_ms),
            r.session_started_at_ms.map(at),
            r.origin,
            r.generation,
        ),
        Err(_) => (text, modified, None, None, 0),
    };
    let token = Token::parse(&token).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(Persisted {
        token,
        confirmed_at,
        session_started_at,
        origin,
        generation,
    }))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_planted_temporary_file_or_symlink_never_receives_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.state");
        let leak = dir.path().join("leak");
        std::fs::write(&leak, "").unwrap();
        // What the old fixed temporary name was, planted as a symlink and as a world-readable file.
        std::os::unix::fs::symlink(&leak, dir.path().join(".token.state.tmp")).unwrap();
        let state = Persisted {
            token: Token::parse("secret-token").unwrap(),
            confirmed_at: at(1_700_000_000_000),
            session_started_at: None,
            origin: None,
            generation: 0,
        };
        write(&path, &state).unwrap();
        assert_eq!(std::fs::read_to_string(&leak).unwrap(), "");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn prepare_creates_the_directory_and_sweeps_leftover_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a").join("b").join("token.state");
        prepare(&nested).unwrap();
        let mode = std::fs::metadata(nested.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);

        let path = dir.path().join("token.state");
        std::fs::write(dir.path().join(".token.state.0123456789abcdef.tmp"), "a token").unwrap();
        std::fs::write(dir.path().join(".token.state.tmp"), "an older version's").unwrap();
        std::fs::write(dir.path().join(".other.0123456789abcdef.tmp"), "kept").unwrap();
        prepare(&path).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [".other.0123456789abcdef.tmp", "a"]);
        assert!(prepare(dir.path()).unwrap_err().contains("is a directory"));
        assert!(is_tmp_name(&tmp_name("token.state", u64::MAX), "token.state"));
        assert!(!is_tmp_name(".token.state.0123.tmp", "token.state"));
        assert!(!is_tmp_name("token.state", "token.state"));
    }

    #[test]
    fn round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.state");
        let state = Persisted {
            token: Token::parse("abc.def.ghi").unwrap(),
            confirmed_at: at(1_700_000_000_000),
            session_started_at: Some(at(1_699_990_000_000)),
            origin: Some("sha256:0123abcd".into()),
            generation: 7,
        };
        write(&path, &state).unwrap();
        write(&path, &state).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let back = read(&path).unwrap().unwrap();
        assert_eq!(back.token, state.token);
        assert_eq!(back.confirmed_at, state.confirmed_at);
        assert_eq!(back.session_started_at, state.session_started_at);
        assert_eq!(back.origin, state.origin);
        assert!(read(&dir.path().join("none")).unwrap().is_none());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["token.state"], "no temporary file is left behind");
        std::fs::write(&path, "bare-token\n").unwrap();
        assert_eq!(read(&path).unwrap().unwrap().token.expose(), "bare-token");
    }
}
