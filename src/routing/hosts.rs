//! Host -> the one set of routes searched for it: the APIs that name the host exactly, else
//! those whose longest matching `*.suffix` matches it, else the APIs without `hosts`. Lookup
//! costs one hash probe per label of the host, whatever the number of APIs.

use std::collections::HashMap;

/// Host names are not secret and the table is built from the config, so a fast hash will do
/// (no flooding risk: the request's host is only looked up, never inserted).
type Map = HashMap<String, usize, ahash::RandomState>;

#[derive(Debug, Default)]
pub struct HostTable {
    exact: Map,
    /// `*.example.com` is stored as `example.com`.
    wildcard: Map,
    /// For hosts nothing names (and requests without a host).
    fallback: usize,
}

/// The host a request names, as matched: lowercase, without the port (RFC 9110 §4.2.3:
/// host names are case-insensitive).
/// RFC 3986 §3.2.2 `uri-host [":" port]`: an IP-literal in brackets, or a reg-name / IPv4
/// address of unreserved characters, percent-encodings and sub-delims; then an optional port of
/// digits. No userinfo (`@`), `/`, `?`, `#`, `\`, space or control character can pass, so the
/// host an API is selected by is the host every upstream reads.
pub fn is_valid_host(host: &[u8]) -> bool {
    let (name, port) = match host.first() {
        Some(b'[') => match host.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &host[1..end];
                // IPv6address or IPvFuture ("v" HEXDIG "." ...): hex digits, `:`, `.` and the
                // characters IPvFuture adds.
                if literal.is_empty()
                    || !literal.iter().all(|&b| {
                        b.is_ascii_hexdigit()
                            || b == b':'
                            || b == b'.'
                            || b == b'v'
                            || b == b'V'
                            || is_unreserved_or_sub_delim(b)
                    })
                {
                    return false;
                }
                (&host[..=end], &host[end + 1..])
            }
            None => return false,
        },
        _ => match host.iter().rposition(|&b| b == b':') {
            Some(i) => (&host[..i], &host[i..]),
            None => (host, &host[host.len()..]),
        },
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    if !port_ok {
        return false;
    }
    if name.first() == Some(&b'[') {
        return true;
    }
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'%' => {
                let hex = |j: usize| name.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return false;
                }
                i += 3;
            }
            b if is_unreserved_or_sub_delim(b) => i += 1,
            _ => return false,
        }
    }
    true
}

fn is_unreserved_or_sub_delim(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b)
}

pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: keep the brackets, drop what follows `]`.
        match rest.find(']') {
            Some(i) => &host[..i + 2],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    let trimmed = without_port.strip_suffix('.').unwrap_or(without_port);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(trimmed)
    }
}

/// A `hosts` entry: an exact name or `*.suffix`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    Suffix(String),
}

impl HostPattern {
    pub fn parse(pattern: &str) -> Result<HostPattern, String> {
        let p = pattern.to_ascii_lowercase();
        let (suffix, name) = match p.strip_prefix("*.") {
            Some(s) => (true, s.to_string()),
            None => (false, p.clone()),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let ip6 = name.starts_with('[') && name.ends_with(']');
        if name.is_empty() || name.contains('*') || (!ip6 && !name.split('.').all(label_ok)) {
            return Err(format!(
                "{pattern:?} is not a host name or `*.suffix` (no port, no other wildcards)"
            ));
        }
        Ok(if suffix {
            HostPattern::Suffix(name)
        } else {
            HostPattern::Exact(name)
        })
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Suffix(s) => write!(f, "*.{s}"),
        }
    }
}

impl HostTable {
    pub fn new(fallback: usize) -> HostTable {
        HostTable {
            fallback,
            ..HostTable::default()
        }
    }

    pub fn insert(&mut self, pattern: &HostPattern, set: usize) {
        match pattern {
            HostPattern::Exact(h) => self.exact.insert(h.clone(), set),
            HostPattern::Suffix(s) => self.wildcard.insert(s.clone(), set),
        };
    }

    /// The set for a host already normalized (`normalize_host`).
    pub fn select(&self, host: &str) -> usize {
        if let Some(&set) = self.exact.get(host) {
            return set;
        }
        if !self.wildcard.is_empty() {
            // `*.suffix` needs at least one label before `.suffix`; the first suffix found
            // while dropping labels from the left is the longest.
            let mut rest = host;
            while let Some((_, suffix)) = rest.split_once('.') {
                if let Some(&set) = self.wildcard.get(suffix) {
                    return set;
                }
                rest = suffix;
            }
        }
        self.fallback
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_uri_host_and_port_only() {
        for good in [
            "a.example",
            "A.Example:8080",
            "127.0.0.1",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:443",
            "x-y_z~.example",
            "a.example:",
            "xn--bcher-kva.example",
            "%41.example",
        ] {
            assert!(is_valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "x.b.example/.a.example",
            "x.b.example?.a.example",
            "x.b.example#.a.example",
            "a\\b",
            "a b",
            "user@a.example",
            "a.example:80x",
            "a.example:80:80",
            "[::1",
            "[::1]x",
            "[]",
            "a\tb",
            "%4",
            "%zz.example",
            "a\"b",
            "[::1/]",
        ] {
            assert!(!is_valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn exact_beats_the_longest_suffix_which_beats_the_fallback() {
        let mut t = HostTable::new(0);
        t.insert(&HostPattern::parse("api.example.com").unwrap(), 1);
        t.insert(&HostPattern::parse("*.example.com").unwrap(), 2);
        t.insert(&HostPattern::parse("*.eu.example.com").unwrap(), 3);
        assert_eq!(t.select("api.example.com"), 1);
        assert_eq!(t.select("x.example.com"), 2);
        assert_eq!(t.select("a.b.example.com"), 2);
        assert_eq!(t.select("x.eu.example.com"), 3);
        assert_eq!(t.select("eu.example.com"), 2);
        // `*.example.com` needs a label before it.
        assert_eq!(t.select("example.com"), 0);
        assert_eq!(t.select("other.org"), 0);
        assert_eq!(t.select(""), 0);
    }

    #[test]
    fn hosts_are_lowercased_and_lose_their_port() {
        assert_eq!(normalize_host("API.Example.COM:8443"), "api.example.com");
        assert_eq!(normalize_host("api.example.com."), "api.example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn patterns_are_checked() {
        assert_eq!(
            HostPattern::parse("*.Example.com").unwrap(),
            HostPattern::Suffix("example.com".into())
        );
        for bad in ["", "*", "a.*.com", "host:80", "*.", "a b"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
