//! Request-target normalization (SPEC decisions 1 and 2).
//!
//! The path that is matched against the routes is the path that is forwarded, so an upstream
//! can never be handed a path that resolves to a route the token was not checked against.

use std::borrow::Cow;

/// Why a request target was refused with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request target must be an absolute path")]
    NotAbsolute,
    #[error("malformed percent-encoding in the path")]
    BadPercentEncoding,
    #[error("encoded '/' or '\\' in the path")]
    EncodedSeparator,
    #[error("backslash in the path")]
    Backslash,
    #[error("NUL or control character in the path")]
    ControlCharacter,
    #[error("the path is not valid UTF-8 after decoding")]
    NotUtf8,
    #[error("dot or empty segment with parameters in the path")]
    DotSegmentWithParameters,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// True when `path` is already in normal form, so the common case costs one scan and no
/// allocation.
fn is_normal(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    let mut prev = 0u8;
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        match b {
            b'%' | b'\\' | b';' => return false,
            b'/' if prev == b'/' => return false,
            b'.' if prev == b'/' => {
                // "/." followed by end, '/' or another '.' may be a dot segment.
                let next = path.get(i + 1).copied();
                if matches!(next, None | Some(b'/')) {
                    return false;
                }
                if next == Some(b'.') && matches!(path.get(i + 2).copied(), None | Some(b'/')) {
                    return false;
                }
            }
            0..=0x1f | 0x7f => return false,
            _ => {}
        }
        prev = b;
        i += 1;
    }
    true
}

/// Where a segment's `;params` start: at `;` or an encoded `%3B` (escapes are upper case here).
fn param_start(seg: &[u8]) -> usize {
    (0..seg.len())
        .find(|&i| seg[i] == b';' || seg[i..].starts_with(b"%3B"))
        .unwrap_or(seg.len())
}

/// Pass 1 of `normalize`: validate escapes, decode the unreserved ones (upper-case hex for the
/// rest), and check that the fully decoded form is UTF-8 (an upstream decodes everything, so we
/// judge what it will see).
fn decode_unreserved(bytes: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut decoded_all: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut partly: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (h, l) = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&h), Some(&l)) => (h, l),
                    _ => return Err(PathError::BadPercentEncoding),
                };
                let v = match (hex(h), hex(l)) {
                    (Some(h), Some(l)) => h << 4 | l,
                    _ => return Err(PathError::BadPercentEncoding),
                };
                match v {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
                    _ => {}
                }
                decoded_all.push(v);
                if is_unreserved(v) {
                    partly.push(v);
                } else {
                    partly.push(b'%');
                    partly.push(h.to_ascii_uppercase());
                    partly.push(l.to_ascii_uppercase());
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            _ => {
                decoded_all.push(b);
                partly.push(b);
                i += 1;
            }
        }
    }
    if std::str::from_utf8(&decoded_all).is_err() {
        return Err(PathError::NotUtf8);
    }
    Ok(partly)
}

/// Normalize the path part of a request target (without the query).
///
/// - percent-encoded unreserved characters are decoded, other escapes kept with upper-case hex;
/// - an encoded `/` or `\`, any NUL or control character, a raw `\`, bad escapes, or bytes that
///   are not UTF-8 once decoded are refused;
/// - dot segments are removed (RFC 3986 §5.2.4) and repeated slashes merged.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if is_normal(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }

    let partly = decode_unreserved(bytes)?;

    // Pass 2: segments. Empty segments (repeated slashes) are merged, "." dropped, ".." pops.
    let ends_with_slash =
        partly.ends_with(b"/") || partly.ends_with(b"/.") || partly.ends_with(b"/..");
    let mut out: Vec<&[u8]> = Vec::new();
    for seg in partly.split(|&c| c == b'/') {
        // Servlet containers strip `;params` before resolving dot segments, so `..;x` would
        // climb on the upstream while looking like a plain name here; some decode `%3B` first.
        let bare = &seg[..param_start(seg)];
        match seg {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            // `;x` alone would vanish on the upstream just the same (`/a/;x/b` -> `/a/b`).
            _ if bare.is_empty() || bare == b"." || bare == b".." => {
                return Err(PathError::DotSegmentWithParameters)
            }
            _ => out.push(seg),
        }
    }
    let mut result = String::with_capacity(partly.len());
    for seg in &out {
        result.push('/');
        // Every byte kept is either ASCII or part of an input that was a &str.
        result.push_str(std::str::from_utf8(seg).map_err(|_| PathError::NotUtf8)?);
    }
    if result.is_empty() || (ends_with_slash && !out.is_empty()) {
        result.push('/');
    }
    Ok(Cow::Owned(result))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str, want: &str) {
        assert_eq!(normalize(input).as_deref(), Ok(want), "input {input:?}");
    }
    fn bad(input: &str, want: PathError) {
        assert_eq!(normalize(input), Err(want), "input {input:?}");
    }

    #[test]
    fn already_normal_paths_are_borrowed() {
        for p in [
            "/",
            "/contacts",
            "/contacts/42",
            "/a.b/c..d/.e",
            "/a/b/",
            "/files/x-y_z~",
        ] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn dot_segments_behind_encoded_semicolons_are_refused() {
        for p in [
            "/a/..%3B/b",
            "/a/..%3b/b",
            "/a/.%3bx/b",
            "/a/..%3Bjsessionid=1/admin",
        ] {
            bad(p, PathError::DotSegmentWithParameters);
        }
        ok("/a/b%3Bc", "/a/b%3Bc");
        ok("/a/b;jsessionid=1", "/a/b;jsessionid=1");
        bad("/a/;x/b", PathError::DotSegmentWithParameters);
        bad("/%3B", PathError::DotSegmentWithParameters);
    }

    #[test]
    fn dot_segments_are_removed() {
        ok("/a/./b", "/a/b");
        ok("/a/../b", "/b");
        ok("/a/b/..", "/a/");
        ok("/a/b/.", "/a/b/");
        ok("/..", "/");
        ok("/../../etc/passwd", "/etc/passwd");
        ok("/public/../admin", "/admin");
        ok("/.", "/");
    }

    #[test]
    fn encoded_dots_are_decoded_then_removed() {
        ok("/public/%2e%2e/admin", "/admin");
        ok("/public/%2E%2E/admin", "/admin");
        ok("/public/.%2e/admin", "/admin");
        ok("/a/%2e/b", "/a/b");
    }

    #[test]
    fn repeated_slashes_are_merged() {
        ok("//contacts", "/contacts");
        ok("/contacts//42", "/contacts/42");
        ok("/contacts///", "/contacts/");
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_kept_upper_case() {
        ok("/cont%61cts", "/contacts");
        ok("/a%7eb", "/a~b");
        ok("/a%20b", "/a%20b");
        ok("/a%3fb", "/a%3Fb");
        ok("/caf%C3%A9", "/caf%C3%A9");
    }

    #[test]
    fn encoded_separators_are_refused() {
        bad("/a%2fb", PathError::EncodedSeparator);
        bad("/a%2Fb", PathError::EncodedSeparator);
        bad("/public/..%2fadmin", PathError::EncodedSeparator);
        bad("/a%5cb", PathError::EncodedSeparator);
        bad("/a%5C..%5Cb", PathError::EncodedSeparator);
    }

    #[test]
    fn bad_escapes_nul_and_controls_are_refused() {
        bad("/a%", PathError::BadPercentEncoding);
        bad("/a%2", PathError::BadPercentEncoding);
        bad("/a%zz", PathError::BadPercentEncoding);
        bad("/a%00b", PathError::ControlCharacter);
        bad("/a%0d%0ab", PathError::ControlCharacter);
        bad("/a\0b", PathError::ControlCharacter);
        bad("/a\\b", PathError::Backslash);
    }

    #[test]
    fn non_utf8_after_decoding_is_refused() {
        bad("/a%ff", PathError::NotUtf8);
        bad("/a%C3", PathError::NotUtf8);
        bad("/%c0%af", PathError::NotUtf8);
    }

    #[test]
    fn parameters_on_dot_segments_are_refused() {
        bad("/public/..;/admin", PathError::DotSegmentWithParameters);
        bad("/public/.;x/admin", PathError::DotSegmentWithParameters);
        bad("/public/%2e%2e;/admin", PathError::DotSegmentWithParameters);
        ok("/contacts;v=1", "/contacts;v=1");
    }

    #[test]
    fn non_absolute_targets_are_refused() {
        bad("*", PathError::NotAbsolute);
        bad("contacts", PathError::NotAbsolute);
        bad("", PathError::NotAbsolute);
    }

    #[test]
    fn normalization_is_idempotent() {
        for p in ["/a/./b/../c//d/", "/%2e%2e/x", "/a%20b/c", "/x/y/..", "//"] {
            let once = normalize(p).unwrap().into_owned();
            assert_eq!(normalize(&once).unwrap(), once, "{p}");
        }
    }
}
