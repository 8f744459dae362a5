//! Request-path rules, shared by the configuration (which checks the prefixes and `base_url`'s path with them) and
//! the proxy (which checks every request): a path that cannot mean something else after decoding or
//! normalization, whole-segment prefixes, and the token refresh endpoint however it is spelled. Pure functions.

/// Why a path was refused (400 `BAD_REQUEST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with `/`")]
    NotAbsolute,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains an empty segment (`//`)")]
    EmptySegment,
    #[error("the path contains a dot-segment")]
    DotSegment,
    #[error("the path contains an encoded `/` or `\\`")]
    EncodedSeparator,
    #[error("the path contains an invalid percent-encoding")]
    BadEncoding,
    #[error("the path contains a control character")]
    ControlCharacter,
}

/// Percent-decoding rounds tried, so `%252e%252e` (double encoding) is seen for what it is.
const DECODE_ROUNDS: usize = 3;

/// Refuse any path that could mean something else after decoding or normalization: dot-segments (also
/// percent-encoded, or followed by `;params`), backslashes, empty segments, encoded separators, control bytes.
pub fn check_path(path: &str) -> Result<(), PathError> {
    if plain(path) {
        return Ok(());
    }
    check_segments(path)
}

/// The usual API path, decided in one pass: `/`, then only letters, digits, `-`, `_`, `~` and single slashes.
/// With no `.`, `%`, `\`, `;` or control byte in it, no rule of [`check_segments`] can refuse it.
pub(crate) fn plain(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.first() == Some(&b'/')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'~'))
        && !bytes.windows(2).any(|w| w == b"//")
}

/// Every rule, segment by segment: [`check_path`] for a path already known not to be [`plain`].
pub(crate) fn check_segments(path: &str) -> Result<(), PathError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() {
            // Only a trailing slash may leave a segment empty.
            if segments.peek().is_some() {
                return Err(PathError::EmptySegment);
            }
            continue;
        }
        check_segment(segment)?;
    }
    Ok(())
}

fn check_segment(segment: &str) -> Result<(), PathError> {
    // Copied only if it has something to decode.
    let mut decoded = std::borrow::Cow::Borrowed(segment.as_bytes());
    for _ in 0..DECODE_ROUNDS {
        if is_dot_segment(&decoded) {
            return Err(PathError::DotSegment);
        }
        if decoded.iter().any(|b| *b < 0x20 || *b == 0x7f) {
            return Err(PathError::ControlCharacter);
        }
        if !decoded.contains(&b'%') {
            return Ok(());
        }
        decoded = std::borrow::Cow::Owned(percent_decode(&decoded)?);
        if decoded.iter().any(|b| *b == b'/' || *b == b'\\') {
            return Err(PathError::EncodedSeparator);
        }
    }
    if is_dot_segment(&decoded) {
        return Err(PathError::DotSegment);
    }
    Ok(())
}

/// `.` or `..`, ignoring `;params` (some servers strip them before resolving).
fn is_dot_segment(segment: &[u8]) -> bool {
    let name = segment.split(|b| *b == b';').next().unwrap_or_default();
    name == b"." || name == b".."
}

fn percent_decode(input: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            let hex = input.get(i + 1..i + 3).ok_or(PathError::BadEncoding)?;
            let s = std::str::from_utf8(hex).map_err(|_| PathError::BadEncoding)?;
            out.push(u8::from_str_radix(s, 16).map_err(|_| PathError::BadEncoding)?);
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Whether `path` lies under one of `prefixes`, by whole segments. Empty `prefixes` allows every path.
pub fn prefix_allowed(path: &str, prefixes: &[String]) -> bool {
    prefixes.is_empty()
        || prefixes.iter().any(|p| {
            p.is_empty()
                || path
                    .strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
}

/// `token.refresh_path`, prepared once for the comparison on every request ([`RefreshPath::matches`]).
#[derive(Debug, Clone)]
pub(crate) struct RefreshPath {
    /// Without its query.
    path: String,
    /// Without the slashes at both ends, when it has no `%` or `;` (the usual case): compared as it is.
    plain: Option<String>,
}

impl RefreshPath {
    /// Prepare `token.refresh_path` (its query, if any, is not part of the comparison).
    pub(crate) fn new(refresh: &str) -> Self {
        let path = refresh.split('?').next().unwrap_or_default().to_owned();
        let plain = (!path.contains(['%', ';'])).then(|| path.trim_matches('/').to_owned());
        Self { path, plain }
    }

    /// Whether `path` (the request's own, which the upstream URL puts after `base_url`'s prefix, as it does the
    /// refresh path) names the token refresh endpoint. Read the way an upstream might read it: one round of
    /// percent-decoding, ASCII case, `;params` and a trailing slash ignored. `path_is_plain` is [`plain`]`(path)`,
    /// which the handler has already worked out for [`check_path`]: the usual path is not scanned again.
    pub(crate) fn matches(&self, path: &str, path_is_plain: bool) -> bool {
        // With no `%` or `;` on either side, nothing is decoded or cut off, so the segments match exactly when
        // the paths do (ignoring ASCII case and the slashes at both ends).
        if let (true, Some(refresh)) = (path_is_plain, &self.plain) {
            let path = path.trim_matches('/');
            return path.len() == refresh.len() && path.eq_ignore_ascii_case(refresh);
        }
        segments_match(path, &self.path)
    }
}

/// The general comparison, segment by segment, without allocating.
fn segments_match(path: &str, refresh: &str) -> bool {
    let mut ours = segments(path);
    let mut theirs = segments(refresh);
    loop {
        match (ours.next(), theirs.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if same_segment(a, b) => {}
            _ => return false,
        }
    }
}

/// The segments of a path, without the empty ones a leading or trailing slash leaves.
fn segments(path: &str) -> impl Iterator<Item = &[u8]> {
    let path = path.trim_start_matches('/').trim_end_matches('/');
    path.as_bytes()
        .split(|b| *b == b'/')
        .filter(|s| !path.is_empty() || !s.is_empty())
}

/// Two segments equal after one round of percent-decoding, ignoring ASCII case and `;params`.
fn same_segment(a: &[u8], b: &[u8]) -> bool {
    decoded(a)
        .map(|c| c.to_ascii_lowercase())
        .eq(decoded(b).map(|c| c.to_ascii_lowercase()))
}

/// The bytes of a segment up to `;`, with `%XX` decoded (an invalid escape stays as it is).
fn decoded(segment: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let name = segment.split(|b| *b == b';').next().unwrap_or_default();
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *name.get(i)?;
        if b == b'%' {
            let hex = |at: usize| name.get(at).and_then(|h| (*h as char).to_digit(16));
            if let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) {
                i += 3;
                return Some((hi * 16 + lo) as u8);
            }
        }
        i += 1;
        Some(b)
    })
}

#[cfg(test)]
mod tests;
