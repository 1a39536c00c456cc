//! Property-based tests of the parsers an attacker feeds: the path normalizer, the router, the
//! token parser and the config loader. In CI they run with a fixed seed and case count; for a
//! longer run: `PROPTEST_CASES=200000 PROPTEST_RNG_SEED=$RANDOM cargo test --release --test properties`.

mod common;

use http::Method;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use scopegate::routing::{normalize, Lookup, Router};

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5c0_9e6a7e);
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Path-like input: the characters that matter to normalization, with escapes of them.
fn path_input() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("/".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just(";".to_string()),
        Just("%2e".to_string()),
        Just("%2E".to_string()),
        Just("%2f".to_string()),
        Just("%5C".to_string()),
        Just("%3B".to_string()),
        Just("%3b".to_string()),
        Just("%41".to_string()),
        Just("%7e".to_string()),
        Just("%25".to_string()),
        Just("%".to_string()),
        Just("%zz".to_string()),
        Just("%00".to_string()),
        Just("%c3%a9".to_string()),
        Just("%ff".to_string()),
        Just("\\".to_string()),
        "[a-c]{1,3}",
        Just("é".to_string()),
    ];
    proptest::collection::vec(atom, 0..12).prop_map(|v| format!("/{}", v.concat()))
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// How a typical upstream resolves the path it receives: decode, drop `;params` of each
/// segment (servlet containers), merge slashes, resolve dot segments.
fn upstream_resolves(forwarded: &str) -> Vec<Vec<u8>> {
    let decoded = percent_decode(forwarded);
    let mut out: Vec<Vec<u8>> = Vec::new();
    for seg in decoded.split(|&c| c == b'/') {
        let bare: Vec<u8> = seg.split(|&c| c == b';').next().unwrap_or(seg).to_vec();
        match bare.as_slice() {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            _ => out.push(seg.to_vec()),
        }
    }
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_normalizer_never_panics_and_its_output_is_final(input in path_input()) {
        if let Ok(p) = normalize(&input) {
            prop_assert!(p.starts_with('/'));
            prop_assert!(!p.contains("//"), "{p}");
            for seg in p.split('/') {
                prop_assert!(seg != "." && seg != "..", "{p}");
            }
            // Idempotent.
            let again = normalize(&p).unwrap();
            prop_assert_eq!(&*again, &*p);
            // What the upstream resolves it to is what was matched: the same segments.
            let matched: Vec<Vec<u8>> = p
                .split('/')
                .filter(|s| !s.is_empty())
                .map(|s| s.as_bytes().to_vec())
                .collect();
            let resolved = upstream_resolves(&p);
            prop_assert_eq!(resolved.len(), matched.len(), "{} resolves to other segments", p);
            for (r, m) in resolved.iter().zip(&matched) {
                prop_assert_eq!(r, &percent_decode(std::str::from_utf8(m).unwrap()));
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_normalizer(input in "\\PC{0,40}") {
        let _ = normalize(&input);
    }
}

/// A template: literal, `{x}` or (last) `{*rest}` segments from a small alphabet, so that
/// random paths hit them often.
fn template() -> impl Strategy<Value = String> {
    let seg = prop_oneof![Just("a"), Just("b"), Just("c"), Just("{x}")];
    (proptest::collection::vec(seg, 1..4), any::<bool>()).prop_map(|(segs, tail)| {
        let mut t = format!("/{}", segs.join("/"));
        if tail {
            t.push_str("/{*rest}");
        }
        t
    })
}

fn rank(template: &str) -> Vec<u8> {
    template[1..]
        .split('/')
        .map(|s| {
            if s.starts_with("{*") {
                2
            } else if s.starts_with('{') {
                1
            } else {
                0
            }
        })
        .collect()
}

fn matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template[1..].split('/').collect();
    let p: Vec<&str> = path[1..].split('/').collect();
    for (i, seg) in t.iter().enumerate() {
        if seg.starts_with("{*") {
            return p.len() > i && !p[i..].join("/").is_empty();
        }
        match p.get(i) {
            None => return false,
            Some(ps) if seg.starts_with('{') => {
                if ps.is_empty() {
                    return false;
                }
            }
            Some(ps) if ps != seg => return false,
            _ => {}
        }
    }
    t.len() == p.len()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_most_specific_template_wins_as_a_brute_force_search_says(
        templates in proptest::collection::vec(template(), 1..10),
        paths in proptest::collection::vec(proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c"), Just("zz")], 1..6), 1..20),
    ) {
        let mut router = Router::default();
        let mut kept: Vec<String> = Vec::new();
        for t in &templates {
            // Routes for every method; a second template of the same shape is a duplicate.
            if router.insert(t, &[], kept.len()).is_ok() {
                kept.push(t.clone());
            }
        }
        for segs in &paths {
            let path = format!("/{}", segs.join("/"));
            let best = kept
                .iter()
                .enumerate()
                .filter(|(_, t)| matches(t, &path))
                .min_by(|(_, a), (_, b)| rank(a).cmp(&rank(b)))
                .map(|(i, _)| i);
            match router.lookup(&Method::GET, &path) {
                Lookup::Found(i) => {
                    let want = best.map(|b| kept[b].clone());
                    prop_assert_eq!(Some(kept[i].clone()), want, "{} among {:?}", path, kept);
                }
                other => prop_assert!(best.is_none(), "{} gave {:?}; {:?} matches", path, other, best.map(|b| &kept[b])),
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_token_parser_never_panics_and_refuses_any_change_to_the_signed_part(
        junk in proptest::collection::vec(any::<u8>(), 0..600),
        at in any::<prop::sample::Index>(),
        to in "[A-Za-z0-9_.-]",
    ) {
        let verifier = verifier();
        let now = common::now();
        let _ = verifier.verify(&junk, now);
        let token = common::token("read:contacts");
        prop_assert!(verifier.verify(token.as_bytes(), now).is_ok());
        let signed_len = token.rfind('.').unwrap();
        let i = at.index(signed_len);
        let mut changed = token.clone().into_bytes();
        let replacement = to.as_bytes()[0];
        prop_assume!(changed[i] != replacement);
        changed[i] = replacement;
        prop_assert!(verifier.verify(&changed, now).is_err(), "changed byte {} accepted", i);
    }

    #[test]
    fn the_config_loader_never_panics_and_every_error_has_a_position(
        cut in any::<prop::sample::Index>(),
        insert in "[\\[\\]{}=\"a-z0-9 ._\\n/*-]{0,12}",
    ) {
        let base = common::config_full(1, Some(2), &["127.0.0.1:3".parse().unwrap()], &common::file_issuer(), "");
        let at = cut.index(base.len());
        let at = (0..=at).rev().find(|&i| base.is_char_boundary(i)).unwrap_or(0);
        let text = format!("{}{insert}{}", &base[..at], &base[at..]);
        let source = scopegate::config::Source { name: "t.toml".into(), text };
        let result = scopegate::config::parse(source, std::path::PathBuf::from("/nonexistent"))
            .and_then(|loaded| scopegate::compile::build(&loaded, 1));
        if let Err(e) = result {
            let shown = e.to_string();
            prop_assert!(e.line >= 1 && e.col >= 1);
            prop_assert!(shown.starts_with(&format!("t.toml:{}:{}: ", e.line, e.col)), "{}", shown);
        }
    }
}

/// A verifier trusting the test key, as a compiled config builds it.
fn verifier() -> &'static scopegate::auth::Verifier {
    use std::sync::OnceLock;
    static SNAP: OnceLock<(scopegate::snapshot::Snapshot, tempfile::TempDir)> = OnceLock::new();
    &SNAP
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("jwks.json"), &common::key().jwks).unwrap();
            let text = common::config_full(
                1,
                None,
                &["127.0.0.1:3".parse().unwrap()],
                &common::file_issuer(),
                "",
            );
            let source = scopegate::config::Source {
                name: "t.toml".into(),
                text,
            };
            let loaded = scopegate::config::parse(source, dir.path().to_path_buf()).unwrap();
            (scopegate::compile::build(&loaded, 1).unwrap(), dir)
        })
        .0
        .verifier
}
