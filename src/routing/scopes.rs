//! Scopes: what a route requires and what a token grants, compared as whole, case-sensitive
//! words (RFC 6749 §3.3), and the one description of a requirement that `check`, `explain` and
//! the 403 challenge all use.

use std::fmt;

/// What a route demands of a token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequiredScopes {
    /// Every one of these.
    pub all: Vec<String>,
    /// At least one of these (when not empty).
    pub any: Vec<String>,
}

impl RequiredScopes {
    /// All of `all`, and one of `any` when given.
    pub fn satisfied_by(&self, granted: &ScopeSet) -> bool {
        self.all.iter().all(|s| granted.contains(s))
            && (self.any.is_empty() || self.any.iter().any(|s| granted.contains(s)))
    }

    /// The `scope` parameter of a 403 challenge (RFC 6750 §3): every scope named, space-separated.
    pub fn challenge_scope(&self) -> String {
        let mut words: Vec<&str> = self.all.iter().map(String::as_str).collect();
        words.extend(self.any.iter().map(String::as_str));
        words.join(" ")
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.all.iter().chain(&self.any).map(String::as_str)
    }
}

/// `read:a write:a + one of (admin | owner)`, or `any valid token` when nothing is named.
impl fmt::Display for RequiredScopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.all.is_empty(), self.any.is_empty()) {
            (true, true) => f.write_str("any valid token"),
            (false, true) => f.write_str(&self.all.join(" ")),
            (true, false) => write!(f, "one of ({})", self.any.join(" | ")),
            (false, false) => write!(
                f,
                "{} + one of ({})",
                self.all.join(" "),
                self.any.join(" | ")
            ),
        }
    }
}

/// RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
pub fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// Granted scopes, sorted and deduplicated; compared as whole, case-sensitive words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet(Vec<Box<str>>);

impl ScopeSet {
    pub fn from_words<'a>(words: impl IntoIterator<Item = &'a str>) -> ScopeSet {
        let mut v: Vec<Box<str>> = words
            .into_iter()
            .filter(|w| !w.is_empty())
            .map(Box::from)
            .collect();
        v.sort_unstable();
        v.dedup();
        ScopeSet(v)
    }

    pub fn contains(&self, scope: &str) -> bool {
        self.0.binary_search_by(|s| (**s).cmp(scope)).is_ok()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|s| &**s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_compare_as_whole_words() {
        let s = ScopeSet::from_words("read:contactsX xread:contacts READ:contacts".split(' '));
        assert!(!s.contains("read:contacts"));
        assert!(s.contains("read:contactsX"));
        let s = ScopeSet::from_words(["read:contacts", "write:contacts"]);
        assert!(s.contains("read:contacts"));
        assert!(!s.contains("read"));
    }

    #[test]
    fn all_and_any_are_anded() {
        let req = RequiredScopes {
            all: vec!["a".into()],
            any: vec!["x".into(), "y".into()],
        };
        assert!(req.satisfied_by(&ScopeSet::from_words(["a", "y"])));
        assert!(!req.satisfied_by(&ScopeSet::from_words(["a"])));
        assert!(!req.satisfied_by(&ScopeSet::from_words(["x", "y"])));
        assert!(RequiredScopes::default().satisfied_by(&ScopeSet::default()));
        assert_eq!(req.to_string(), "a + one of (x | y)");
        assert_eq!(req.challenge_scope(), "a x y");
        assert_eq!(RequiredScopes::default().to_string(), "any valid token");
    }

    #[test]
    fn scope_tokens_follow_rfc_6749() {
        assert!(is_scope_token("read:contacts"));
        for bad in ["", "a b", "a\"b", "a\\b"] {
            assert!(!is_scope_token(bad), "{bad}");
        }
    }
}
