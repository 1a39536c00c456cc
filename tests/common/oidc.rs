//! node-oidc-provider (tests/oidc, from npm) on 127.0.0.1, for the interoperability tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{eventually, ProcessGroup, SpawnGroup};

/// tests/oidc: the provider, the DPoP client script and their npm packages.
pub fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// The provider on `port`, issuing tokens whose `aud` is `audience`; `extra` are further
/// arguments of provider.mjs (`dpop-nonce`: its token endpoint wants DPoP nonces). The npm
/// packages are installed first when they are missing.
pub fn start_oidc_provider(port: u16, audience: &str, extra: &[&str]) -> ProcessGroup {
    let dir = oidc_dir();
    let installed = ["oidc-provider", "oauth4webapi"]
        .iter()
        .all(|p| dir.join("node_modules").join(p).exists());
    if !installed {
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect(
                "npm is needed to install the OIDC provider and client for this test (Node.js 20+)",
            );
        assert!(status.success(), "npm install failed in {}", dir.display());
    }
    let node = Command::new("node")
        .arg("provider.mjs")
        .arg(port.to_string())
        .arg(audience)
        .args(extra)
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_group()
        .expect("node is needed to run the OIDC provider for this test");
    assert!(
        eventually(90, || std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok()),
        "provider did not start"
    );
    node
}
