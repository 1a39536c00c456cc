//! `scopegate demo`: the shipped example config in front of a built-in contacts API, with a
//! fresh signing key and ready-to-paste curl lines.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::mint;

fn table(v: Option<&mut toml::Value>) -> anyhow::Result<&mut toml::Table> {
    v.and_then(toml::Value::as_table_mut)
        .ok_or_else(|| anyhow::anyhow!("config/scopegate.toml changed shape"))
}

/// The example shipped in `config/`: the demo runs exactly these routes.
const EXAMPLE_CONFIG: &str = include_str!("../../config/scopegate.toml");

/// Write the demo's config (the shipped example, pointed at `listen` and `upstream`), key and
/// JWKS into `dir`.
pub fn write_demo_files(dir: &Path, listen: &str, upstream: SocketAddr) -> anyhow::Result<()> {
    let (pem, jwks) = mint::generate_rsa_key("demo-key");
    std::fs::write(dir.join("signing-key.pem"), pem)?;
    std::fs::write(dir.join("jwks.json"), jwks)?;
    let mut config: toml::Table = toml::from_str(EXAMPLE_CONFIG)?;
    table(config.get_mut("server"))?.insert("listen".into(), listen.into());
    let upstreams = table(config.get_mut("upstreams"))?;
    table(upstreams.get_mut("contacts"))?
        .insert("servers".into(), vec![upstream.to_string()].into());
    let text = format!(
        "# Written by `scopegate demo` from config/scopegate.toml.\n{}",
        toml::to_string(&config)?
    );
    std::fs::write(dir.join("scopegate.toml"), text)?;
    Ok(())
}

pub fn run(listen: &str) -> anyhow::Result<()> {
    // Bound here, so the API accepts before the proxy in front of it starts.
    let api = std::net::TcpListener::bind("127.0.0.1:0")?;
    let upstream = api.local_addr()?;
    let dir = std::env::temp_dir().join(format!("scopegate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    write_demo_files(&dir, listen, upstream)?;
    let pem = std::fs::read(dir.join("signing-key.pem"))?;
    let now = crate::snapshot::unix_now();
    let token = |scope: &str| {
        let req = mint::TokenRequest {
            kid: Some("demo-key".into()),
            scope: scope.into(),
            iss: mint::DEFAULT_ISSUER.into(),
            aud: mint::DEFAULT_AUDIENCE.into(),
            sub: "demo-user".into(),
            ttl: Duration::from_secs(3600),
            claims: Vec::new(),
            jkt: None,
            x5t: None,
        };
        mint::mint(&pem, &req, now)
    };
    let reader = token("read:contacts")?;
    let admin = token("read:contacts write:contacts delete:contacts")?;
    let base = format!("http://{listen}");
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        r#"
scopegate demo: proxy on {base} in front of a demo contacts API on {upstream}
config, key and JWKS in {dir}

  # 200: the token carries read:contacts
  curl -i {base}/contacts -H "Authorization: Bearer {reader}"

  # 401: no token
  curl -i {base}/contacts

  # 403: a read-only token cannot delete (needs delete:contacts)
  curl -i -X DELETE {base}/contacts/1 -H "Authorization: Bearer {reader}"

  # 200: this token carries delete:contacts
  curl -i -X DELETE {base}/contacts/1 -H "Authorization: Bearer {admin}"

  # 200 without a token: /health is a public route
  curl -i {base}/health

  # mint your own: scopegate token --key {key} --kid demo-key --scope "read:contacts"
"#,
        dir = dir.display(),
        key = dir.join("signing-key.pem").display(),
    )?;
    drop(out);
    crate::edge::server::run_with(
        &dir.join("scopegate.toml"),
        Some(api),
        crate::edge::server::Start::Fresh,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
}
