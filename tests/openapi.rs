//! `scopegate openapi import` and `coverage` on real public documents: import -> check ->
//! coverage round-trips with zero gaps, and coverage finds what was changed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/openapi")
        .join(name)
}

fn scopegate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config around an imported section: server, issuer and upstream.
fn config_with(dir: &Path, section: &str) -> PathBuf {
    std::fs::write(dir.join("jwks.json"), &key().jwks).unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:1\"\n[[issuers]]\nissuer = \"{ISS}\"\njwks_file = \"jwks.json\"\n[upstreams.backend]\nservers = [\"127.0.0.1:2\"]\n\n{section}"
    );
    let path = dir.join("scopegate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn round_trip(doc: &str, api: &str, routes_at_least: usize) -> (tempfile::TempDir, PathBuf) {
    let file = data(doc);
    let file = file.to_str().unwrap();
    let (code, section, warnings) = scopegate(&[
        "openapi",
        "import",
        file,
        "--api",
        api,
        "--upstream",
        "backend",
    ]);
    assert_eq!(code, 0, "{warnings}");
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), &section);
    let (code, table, err) = scopegate(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "check: {err}\n{section}");
    let routes: usize = table
        .lines()
        .last()
        .and_then(|l| l.split(" ok (").nth(1))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(routes >= routes_at_least, "{routes} routes");
    let (code, gaps, err) = scopegate(&[
        "openapi",
        "coverage",
        "--config",
        config.to_str().unwrap(),
        file,
    ]);
    assert_eq!((code, gaps.as_str()), (0, ""), "{err}");
    (dir, config)
}

#[test]
fn the_petstore_round_trips_in_yaml_and_json_3_0_and_3_1() {
    for doc in ["petstore-3.0.yaml", "petstore-3.1.json"] {
        let (_dir, config) = round_trip(doc, "pets", 17);
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(text.contains("scopes = { \"write:pets\" = \"modify pets in your account\", \"read:pets\" = \"read your pets\" }"), "{text}");
        assert!(
            text.contains(
                "# GET /pet/{petId}: not imported: security scheme \"api_key\" is not OAuth 2.0"
            ),
            "{text}"
        );
    }
    let (_, _, warnings) = scopegate(&[
        "openapi",
        "import",
        data("petstore-3.0.yaml").to_str().unwrap(),
    ]);
    assert!(
        warnings.contains("warning: GET /store/inventory: not imported"),
        "{warnings}"
    );
}

#[test]
fn a_large_real_api_round_trips() {
    // 758 operations, each with OAuth 2.0 alternatives of one scope each (any_scopes).
    let (_dir, config) = round_trip("google-compute-v1.json", "compute", 758);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("any_scopes = [\"https://www.googleapis.com/auth/cloud-platform\", \"https://www.googleapis.com/auth/compute\"]"));
}

#[test]
fn coverage_reports_every_gap_and_fails() {
    let (_dir, config) = round_trip("petstore-3.0.yaml", "pets", 17);
    let text = std::fs::read_to_string(&config).unwrap();
    // Drop one route, loosen another's scopes, add one the document does not have.
    let changed = text
        .replacen("[[apis.pets.routes]]\nmethods = [\"PUT\"]\npath = \"/pet\"\nscopes = [\"write:pets\", \"read:pets\"]\n", "", 1)
        .replacen("methods = [\"POST\"]\npath = \"/pet\"\nscopes = [\"write:pets\", \"read:pets\"]", "methods = [\"POST\"]\npath = \"/pet\"\nscopes = [\"write:pets\"]", 1)
        + "\n[[apis.pets.routes]]\nmethods = [\"DELETE\"]\npath = \"/pet/{id}/photos\"\nscopes = [\"write:pets\"]\n";
    std::fs::write(&config, changed).unwrap();
    let (code, gaps, err) = scopegate(&[
        "openapi",
        "coverage",
        "--config",
        config.to_str().unwrap(),
        data("petstore-3.0.yaml").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        gaps.lines().collect::<Vec<_>>(),
        vec![
            "missing route: PUT /pet",
            "scope mismatch: POST /pet: map requires [write:pets], document requires [write:pets read:pets]",
            "extra route: DELETE /pet/{id}/photos",
        ]
    );
}
