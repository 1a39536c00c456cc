//! `[forward]`: which claims are sent upstream, under which header names.

use std::str::FromStr;

use http::HeaderName;

use crate::config::{ConfigError, LoadedConfig};

/// claim name -> header name, in the config's order.
pub fn claim_headers(loaded: &LoadedConfig) -> Result<Vec<(String, HeaderName)>, ConfigError> {
    let Some(claims) = &loaded.config.forward.claims else {
        return Ok(Vec::new());
    };
    claims
        .get_ref()
        .iter()
        .map(|(claim, header)| {
            let name = HeaderName::from_str(header).map_err(|_| {
                loaded.source.error(
                    Some(claims.span()),
                    format!("forward.claims.{claim}: {header:?} is not a header name"),
                )
            })?;
            Ok((claim.clone(), name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::parse_for_test;

    #[test]
    fn header_names_are_checked() {
        let l = parse_for_test(
            "[server]\nlisten = \"127.0.0.1:1\"\n[forward]\nclaims = { sub = \"X-Sub\" }\n",
        );
        assert_eq!(claim_headers(&l).unwrap()[0].1, "x-sub");
        let l = parse_for_test(
            "[server]\nlisten = \"127.0.0.1:1\"\n[forward]\nclaims = { sub = \"bad header\" }\n",
        );
        assert!(claim_headers(&l)
            .unwrap_err()
            .message
            .contains("is not a header name"));
    }
}
