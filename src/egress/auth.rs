//! The outbound proxy's Basic credentials: from `upstream.proxy_auth_file` ("user:password", re-read when it
//! changes) or from the proxy URL's `user:password@`. Never shown: `Debug` prints neither part, and the header
//! value is marked sensitive.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

use base64::Engine as _;
use http::HeaderValue;

/// A user name and password for the proxy's Basic authentication (RFC 7617).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    user: String,
    password: String,
}

/// Where the credentials come from, and the ones in use.
pub(crate) struct ProxyAuth {
    source: Source,
}

enum Source {
    None,
    /// From the proxy URL: fixed for the life of the process.
    Url(Credentials),
    /// From `upstream.proxy_auth_file`.
    File {
        path: PathBuf,
        read: Mutex<FileRead>,
    },
}

/// The file as last read: what identified it, and the credentials it held (the last good ones are kept when a
/// later version cannot be used).
struct FileRead {
    stamp: Option<Stamp>,
    credentials: Credentials,
}

/// What changes when the file is rewritten or its Secret symlink swapped: inode, size, modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

// === impl Credentials ===

impl Credentials {
    /// `user:password` as a file holds it: surrounding whitespace (a trailing newline) trimmed, split at the
    /// first `:`. The reason never repeats the text.
    pub(crate) fn parse(text: &str) -> Result<Self, &'static str> {
        let text = text.trim();
        let Some((user, password)) = text.split_once(':') else {
            return Err("must hold \"user:password\" (no `:` found; content not shown)");
        };
        Self::new(user, password)
    }

    /// The `user[:password]` part of a URL, percent-decoded.
    pub(crate) fn from_userinfo(userinfo: &str) -> Result<Self, &'static str> {
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| "the proxy URL's credentials are not UTF-8 once percent-decoded (value not shown)")
        };
        Self::new(&decode(user)?, &decode(password)?)
    }

    fn new(user: &str, password: &str) -> Result<Self, &'static str> {
        if user.is_empty() {
            return Err("the proxy user name is empty (value not shown)");
        }
        if user.chars().chain(password.chars()).any(char::is_control) {
            return Err("the proxy credentials contain control characters (value not shown)");
        }
        Ok(Self {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    /// The user name.
    pub(crate) fn user(&self) -> &str {
        &self.user
    }

    /// The password. Only for handing it to an HTTP client.
    pub(crate) fn password(&self) -> &str {
        &self.password
    }

    /// `Basic base64(user:password)`, marked sensitive (hyper and h2 never log or index a sensitive value).
    pub(crate) fn basic(&self) -> HeaderValue {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", self.user, self.password));
        let mut value = HeaderValue::try_from(format!("Basic {encoded}")).expect("base64 is a valid header value");
        value.set_sensitive(true);
        value
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

// === impl ProxyAuth ===

impl ProxyAuth {
    /// No credentials.
    pub(crate) fn none() -> Self {
        Self { source: Source::None }
    }

    /// The credentials for a proxy: the file's, when `file` is set (read now: one that cannot be read or holds
    /// no `user:password` is refused), else the URL's, else none.
    pub(crate) fn new(url: Option<&Credentials>, file: Option<&Path>) -> Result<Self, String> {
        let source = match (file, url) {
            (Some(path), _) => {
                let (stamp, credentials) = read(path)?;
                Source::File {
                    path: path.to_owned(),
                    read: Mutex::new(FileRead {
                        stamp: Some(stamp),
                        credentials,
                    }),
                }
            }
            (None, Some(credentials)) => Source::Url(credentials.clone()),
            (None, None) => Source::None,
        };
        Ok(Self { source })
    }

    /// Where the credentials come from, for `check-config` and the start-up log.
    pub(crate) fn describe(&self) -> &'static str {
        match self.source {
            Source::None => "no proxy credentials",
            Source::Url(_) => "credentials from the proxy URL",
            Source::File { .. } => "credentials from upstream.proxy_auth_file",
        }
    }

    /// The credentials to send now. A changed file is read again (one `stat` per call: calls are per new
    /// connection, never per request); a changed file that cannot be used leaves the last good credentials in
    /// place, with a warning.
    pub(crate) fn current(&self) -> Option<Credentials> {
        match &self.source {
            Source::None => None,
            Source::Url(credentials) => Some(credentials.clone()),
            Source::File { path, read: cache } => {
                let mut cache = cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let now = stamp(path).ok();
                if now.is_some() && now != cache.stamp {
                    match read(path) {
                        Ok((stamp, credentials)) => {
                            cache.stamp = Some(stamp);
                            if credentials != cache.credentials {
                                tracing::info!(event = "proxy_auth_reloaded", file = %path.display(), "upstream.proxy_auth_file changed; new proxy credentials in use");
                            }
                            cache.credentials = credentials;
                        }
                        Err(reason) => {
                            // Not again until the file changes once more.
                            cache.stamp = now;
                            tracing::warn!(event = "proxy_auth_refused", reason = %reason, "upstream.proxy_auth_file changed but cannot be used; the previous credentials stay in use");
                        }
                    }
                }
                Some(cache.credentials.clone())
            }
        }
    }

    /// The `Proxy-Authorization` value to send now, if any.
    pub(crate) fn header(&self) -> Option<HeaderValue> {
        self.current().map(|c| c.basic())
    }
}

impl fmt::Debug for ProxyAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ProxyAuth").field(&self.describe()).finish()
    }
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path)?;
    Ok(Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// Read and parse `upstream.proxy_auth_file`.
fn read(path: &Path) -> Result<(Stamp, Credentials), String> {
    let shown = path.display();
    let stamp = stamp(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let credentials = Credentials::parse(&text).map_err(|reason| format!("{shown} {reason}"))?;
    Ok((stamp, credentials))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_holds_user_colon_password_and_the_first_colon_splits() {
        let c = Credentials::parse("alice:pa:ss\n").unwrap();
        assert_eq!((c.user(), c.password()), ("alice", "pa:ss"));
        assert!(Credentials::parse("no-colon").is_err());
        assert!(Credentials::parse(":pw").is_err());
        assert!(Credentials::parse("a:b\u{7}").is_err());
    }

    #[test]
    fn credentials_never_show_in_debug_and_the_header_is_sensitive() {
        let c = Credentials::parse("alice:s3cret").unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!format!("{c:?}").contains("alice"));
        let h = c.basic();
        assert!(h.is_sensitive());
        // RFC 7617's example shape: base64 of "alice:s3cret".
        assert_eq!(h.to_str().unwrap(), "Basic YWxpY2U6czNjcmV0");
        let auth = ProxyAuth::new(Some(&c), None).unwrap();
        assert!(!format!("{auth:?}").contains("s3cret"));
    }

    #[test]
    fn url_credentials_are_percent_decoded() {
        let c = Credentials::from_userinfo("al%40ice:p%3Ass").unwrap();
        assert_eq!((c.user(), c.password()), ("al@ice", "p:ss"));
        let c = Credentials::from_userinfo("bob").unwrap();
        assert_eq!((c.user(), c.password()), ("bob", ""));
    }

    #[test]
    fn the_file_wins_over_the_url_and_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy-auth");
        std::fs::write(&path, "first:one\n").unwrap();
        let url = Credentials::parse("url:creds").unwrap();
        let auth = ProxyAuth::new(Some(&url), Some(&path)).unwrap();
        assert_eq!(auth.current().unwrap().user(), "first");

        // A new file (the Secret symlink swap makes a new inode; a rename does here).
        let next = dir.path().join("next");
        std::fs::write(&next, "second:two-longer\n").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(auth.current().unwrap().user(), "second");

        // A broken rewrite keeps the last good credentials.
        let broken = dir.path().join("broken");
        std::fs::write(&broken, "garbage-without-colon\n").unwrap();
        std::fs::rename(&broken, &path).unwrap();
        assert_eq!(auth.current().unwrap().password(), "two-longer");
    }

    #[test]
    fn an_unreadable_or_malformed_file_is_refused_at_start_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        assert!(ProxyAuth::new(None, Some(&missing))
            .unwrap_err()
            .contains("cannot read"));
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "s3cret-without-colon").unwrap();
        let e = ProxyAuth::new(None, Some(&bad)).unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
