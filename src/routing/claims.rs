//! Claim conditions: what a route requires of a token besides scopes
//! (`claims = { sub = "{id}", email_verified = true }`).

use serde_json::Value;

/// Where a path parameter sits in a route's template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamSlot {
    /// `{name}`: the segment at this index.
    Segment(usize),
    /// `{*name}`: everything from this segment on.
    Tail(usize),
}

/// The value a claim must have.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// A string, boolean or integer, compared by JSON type and value.
    Literal(Value),
    /// The decoded path segment a parameter matched (always a string).
    Param { name: String, slot: ParamSlot },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClaimCondition {
    pub claim: String,
    pub expected: Expected,
}

impl ClaimCondition {
    /// Holds when the claim equals the value, or is an array that contains it.
    pub fn holds(&self, claims: &[(Box<str>, Value)], path: &str) -> bool {
        let Some((_, actual)) = claims.iter().find(|(n, _)| **n == *self.claim) else {
            return false;
        };
        let want = match &self.expected {
            Expected::Literal(v) => v.clone(),
            Expected::Param { slot, .. } => match param_value(path, *slot) {
                Some(s) => Value::String(s),
                None => return false,
            },
        };
        match actual {
            Value::Array(items) => items.contains(&want),
            other => *other == want,
        }
    }

    /// What `explain` and the 403's description say when it does not hold.
    pub fn describe(&self) -> String {
        match &self.expected {
            Expected::Literal(v) => format!("claim {:?} must be {v}", self.claim),
            Expected::Param { name, .. } => {
                format!(
                    "claim {:?} must equal the path parameter {{{name}}}",
                    self.claim
                )
            }
        }
    }
}

/// Where parameter `name` is in `template`.
pub fn param_slot(template: &str, name: &str) -> Option<ParamSlot> {
    template
        .trim_start_matches('/')
        .split('/')
        .enumerate()
        .find_map(|(i, seg)| {
            let inner = seg.strip_prefix('{')?.strip_suffix('}')?;
            match inner.strip_prefix('*') {
                Some(tail) if tail == name => Some(ParamSlot::Tail(i)),
                None if inner == name => Some(ParamSlot::Segment(i)),
                _ => None,
            }
        })
}

/// The percent-decoded value of a parameter in a (normalized, matching) path.
pub fn param_value(path: &str, slot: ParamSlot) -> Option<String> {
    let rest = path.strip_prefix('/')?;
    let raw = match slot {
        ParamSlot::Segment(i) => rest.split('/').nth(i)?,
        ParamSlot::Tail(i) => {
            let start: usize = rest.split('/').take(i).map(|s| s.len() + 1).sum();
            rest.get(start..)?
        }
    };
    percent_decode(raw)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Vec<(Box<str>, Value)> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (Box::from(k.as_str()), v.clone()))
            .collect()
    }

    #[test]
    fn params_are_found_and_decoded() {
        assert_eq!(
            param_slot("/users/{id}/orders/{oid}", "oid"),
            Some(ParamSlot::Segment(3))
        );
        assert_eq!(
            param_slot("/files/{*rest}", "rest"),
            Some(ParamSlot::Tail(1))
        );
        assert_eq!(param_slot("/users/{id}", "nope"), None);
        assert_eq!(
            param_value("/users/alice%40x.org", ParamSlot::Segment(1)).unwrap(),
            "alice@x.org"
        );
        assert_eq!(
            param_value("/files/a/b%20c", ParamSlot::Tail(1)).unwrap(),
            "a/b c"
        );
    }

    #[test]
    fn conditions_compare_json_type_and_value_and_arrays_contain() {
        let c = |claim: &str, expected: Expected| ClaimCondition {
            claim: claim.into(),
            expected,
        };
        let t = claims(json!({"sub": "7", "ok": true, "n": 3, "orgs": ["a", "b"], "s": "true"}));
        let sub = c(
            "sub",
            Expected::Param {
                name: "id".into(),
                slot: ParamSlot::Segment(1),
            },
        );
        assert!(sub.holds(&t, "/users/7"));
        assert!(!sub.holds(&t, "/users/8"));
        assert!(c("ok", Expected::Literal(json!(true))).holds(&t, "/"));
        assert!(
            !c("s", Expected::Literal(json!(true))).holds(&t, "/"),
            "\"true\" is not true"
        );
        assert!(
            !c("sub", Expected::Literal(json!(7))).holds(&t, "/"),
            "\"7\" is not 7"
        );
        assert!(c("n", Expected::Literal(json!(3))).holds(&t, "/"));
        assert!(c("orgs", Expected::Literal(json!("b"))).holds(&t, "/"));
        assert!(!c("absent", Expected::Literal(json!("b"))).holds(&t, "/"));
    }
}
