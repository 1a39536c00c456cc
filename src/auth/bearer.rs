//! The access token of a request: `Bearer` (RFC 6750 §2.1) or `DPoP` (RFC 9449 §7.1).

use http::header::{HeaderMap, AUTHORIZATION};

/// The request's `Authorization` header could not be read as one credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    /// Two or more `Authorization` headers: which one would the upstream read?
    Ambiguous,
}

/// The authentication scheme a token was sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    /// RFC 9449 §7.1: a DPoP-bound token, with its proof in the `DPoP` header.
    Dpop,
}

/// The bearer token of a request: `Ok(None)` when there is none (no header, or another scheme).
pub fn bearer(headers: &HeaderMap) -> Result<Option<&[u8]>, BearerError> {
    Ok(match credentials(headers)? {
        Some((Scheme::Bearer, token)) => Some(token),
        _ => None,
    })
}

/// The access token of a request and its scheme: `Ok(None)` when there is none (no header, or
/// another scheme).
pub fn credentials(headers: &HeaderMap) -> Result<Option<(Scheme, &[u8])>, BearerError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(BearerError::Ambiguous);
    }
    let v = value.as_bytes();
    // RFC 6750 §2.1: "Bearer" 1*SP b64token; schemes are case-insensitive (RFC 9110 §11.1).
    let (scheme, rest) = if v.len() >= 6 && v[..6].eq_ignore_ascii_case(b"bearer") {
        (Scheme::Bearer, &v[6..])
    } else if v.len() >= 4 && v[..4].eq_ignore_ascii_case(b"dpop") {
        (Scheme::Dpop, &v[4..])
    } else {
        return Ok(None);
    };
    if !rest.is_empty() && rest[0] != b' ' {
        return Ok(None); // e.g. "BearerX"
    }
    let start = rest.iter().position(|&c| c != b' ').unwrap_or(rest.len());
    let end = rest
        .iter()
        .rposition(|&c| c != b' ')
        .map(|i| i + 1)
        .unwrap_or(start);
    Ok(Some((scheme, &rest[start..end])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in ["Bearer abc", "bearer abc", "BEARER abc", "Bearer   abc  "] {
            assert_eq!(bearer(&headers(&[v])), Ok(Some(&b"abc"[..])), "{v}");
        }
    }

    #[test]
    fn other_schemes_count_as_no_token() {
        for v in ["Basic dXNlcjpwYXNz", "Bearerabc", "Token abc"] {
            assert_eq!(bearer(&headers(&[v])), Ok(None), "{v}");
        }
        assert_eq!(bearer(&HeaderMap::new()), Ok(None));
    }

    #[test]
    fn the_dpop_scheme_is_case_insensitive_too() {
        for v in ["DPoP abc", "dpop abc", "DPOP  abc "] {
            assert_eq!(
                credentials(&headers(&[v])),
                Ok(Some((Scheme::Dpop, &b"abc"[..]))),
                "{v}"
            );
            assert_eq!(bearer(&headers(&[v])), Ok(None), "{v}");
        }
        assert_eq!(credentials(&headers(&["DPoPabc"])), Ok(None));
    }

    #[test]
    fn two_authorization_headers_are_ambiguous() {
        assert_eq!(
            bearer(&headers(&["Bearer a", "Bearer b"])),
            Err(BearerError::Ambiguous)
        );
    }
}
