//! The `scopegate` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use scopegate::cli::{self, demo, explain, mint, table};
use scopegate::{compile, config, edge, policy, snapshot};

// Pingora allocates per request (headers, buffers); glibc malloc was ~13% of the proxy's CPU
// under bench/load.sh, mimalloc is markedly cheaper there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc commits its first arena eagerly on overcommitting systems (Linux) and keeps it: 10
/// of the 26 MB an idle scopegate held. The option is read when that arena is made, before
/// `main`, so it can only come from the environment: set it and start again (same pid). An
/// operator's own setting wins.
fn commit_memory_on_demand() {
    const OPTION: &str = "MIMALLOC_ARENA_EAGER_COMMIT";
    if std::env::var_os(OPTION).is_some() {
        return;
    }
    if let Ok(exe) = std::env::current_exe() {
        use std::os::unix::process::CommandExt;
        let err = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(OPTION, "0")
            .exec();
        // Only reached when exec failed: run as we are.
        eprintln!("note: could not restart with {OPTION}=0: {err}");
    }
}

#[derive(Parser)]
#[command(
    name = "scopegate",
    version,
    about = "Edge reverse proxy that enforces OAuth 2.0 scopes from JWT access tokens"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Config file (default: $SCOPEGATE_CONFIG, else config/scopegate.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Take over the listening sockets of a running scopegate (send it SIGQUIT once this
        /// one has started): a restart that drops no connection.
        #[arg(long)]
        upgrade: bool,
    },
    /// Parse and validate the config, then print the route table.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show which route a request matches, what it requires, and the decision.
    Explain {
        #[arg(long)]
        config: Option<PathBuf>,
        /// HTTP method, e.g. GET.
        method: String,
        /// Request target, e.g. /contacts/42?x=1.
        target: String,
        /// The request's Host (selects the APIs whose `hosts` match it).
        #[arg(long)]
        host: Option<String>,
        /// A bearer token to validate as the proxy would.
        #[arg(long, conflicts_with = "scopes")]
        token: Option<String>,
        /// Space-separated scopes to try, without a token.
        #[arg(long)]
        scopes: Option<String>,
    },
    /// Run policy test cases against the config; print each failing case and a summary.
    /// Exit 1 when one fails, 2 when the config or the cases file is invalid.
    Test {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The cases: [[case]] tables with a request, a token and the expected status.
        cases: PathBuf,
    },
    /// Print every change in who may do what between two configs. Exit 0 when access is
    /// unchanged, 1 when it changed, 2 on a config error.
    Diff { old: PathBuf, new: PathBuf },
    /// Mint a signed token for local testing and load tests.
    Token {
        /// PEM private key (RSA -> RS256, P-256 -> ES256).
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        request: mint::TokenRequest,
    },
    /// A DPoP proof (RFC 9449) for one request, signed with an EC P-256 key (or, with
    /// `--thumbprint`, the key's thumbprint that `token --jkt` binds a token to).
    DpopProof {
        /// PEM private key (P-256), e.g. from `keygen --ec`.
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        request: scopegate::cli::dpop::ProofRequest,
    },
    /// The SHA-256 thumbprint of a client certificate (PEM), as `token --x5t` binds a token to.
    CertThumbprint { cert: PathBuf },
    /// Generate a signing key and the JWKS that publishes it (for local testing): RSA-2048, or
    /// EC P-256 with `--ec` (also a DPoP key).
    Keygen {
        #[arg(long, default_value = "dev-key")]
        kid: String,
        /// A P-256 key (ES256) instead of RSA.
        #[arg(long)]
        ec: bool,
        /// Where to write the private key (PEM).
        #[arg(long)]
        key_out: PathBuf,
        /// Where to write the JWKS (JSON).
        #[arg(long)]
        jwks_out: PathBuf,
    },
    /// Scope maps from OpenAPI 3.0/3.1 documents (JSON or YAML).
    Openapi {
        #[command(subcommand)]
        command: OpenapiCommand,
    },
    /// Self-contained demo: proxy on 127.0.0.1:8080 in front of a built-in contacts API.
    Demo {
        /// Address the demo proxy listens on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
}

#[derive(Subcommand)]
enum OpenapiCommand {
    /// Print an [apis.NAME] section with one route per operation.
    Import {
        file: PathBuf,
        /// The API's name (default: from the document's title).
        #[arg(long)]
        api: Option<String>,
        /// The API's audience (default: https://NAME.example, to be replaced).
        #[arg(long)]
        audience: Option<String>,
        /// The upstream of its routes.
        #[arg(long)]
        upstream: Option<String>,
    },
    /// Compare the scope map with the document; print every gap; exit 1 when there is one.
    Coverage {
        #[arg(long)]
        config: PathBuf,
        file: PathBuf,
        /// Which [apis.NAME] to compare (default: the only API).
        #[arg(long)]
        api: Option<String>,
    },
}

fn openapi(command: OpenapiCommand) -> anyhow::Result<ExitCode> {
    match command {
        OpenapiCommand::Import {
            file,
            api,
            audience,
            upstream,
        } => {
            let doc = cli::openapi::read(&file)?;
            let name = api.unwrap_or_else(|| cli::openapi::api_name(&doc.title));
            let audience = audience.unwrap_or_else(|| format!("https://{name}.example"));
            let (toml, warnings) =
                scopegate::openapi::import(&doc, &name, &audience, upstream.as_deref());
            for w in warnings {
                eprintln!("warning: {w}");
            }
            print!("{toml}");
            Ok(ExitCode::SUCCESS)
        }
        OpenapiCommand::Coverage { config, file, api } => {
            let snap = match compile::load(&config, 1) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let doc = cli::openapi::read(&file)?;
            let routes = cli::openapi::mapped_routes(&snap, api.as_deref())?;
            for n in scopegate::openapi::not_comparable(&doc) {
                eprintln!("not compared (a scope map cannot express it): {n}");
            }
            let gaps = scopegate::openapi::coverage(&routes, &doc);
            for g in &gaps {
                println!("{g}");
            }
            Ok(if gaps.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// `scopegate check`: warnings on stderr, the route table and a summary on stdout.
fn check(path: &std::path::Path) -> ExitCode {
    match compile::load(path, 1) {
        Ok(snap) => {
            for w in &snap.warnings {
                eprintln!("{w}");
            }
            print!("{}", table::route_table(&snap));
            println!(
                "{}: ok ({} routes, {} issuers, {} upstreams)",
                path.display(),
                snap.routes.len(),
                snap.verifier.issuers.len(),
                snap.upstreams.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Exit status of `test` and `diff` when a file is invalid (1 means a failing case or a change).
const INVALID: u8 = 2;

/// `scopegate test`: failing cases and the summary on stdout, file errors on stderr.
fn policy_test(config: &std::path::Path, cases: &std::path::Path) -> ExitCode {
    let loaded = compile::load(config, 1)
        .and_then(|snap| policy::cases::load(cases, &snap).map(|cases| (snap, cases)));
    let (snap, cases) = match loaded {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(INVALID);
        }
    };
    let report = policy::cases::run_all(&snap, &cases);
    print!("{report}");
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `scopegate diff`: one line per change on stdout.
fn diff(old: &std::path::Path, new: &std::path::Path) -> ExitCode {
    let (old, new) = match (compile::load(old, 1), compile::load(new, 2)) {
        (Ok(o), Ok(n)) => (o, n),
        (o, n) => {
            for e in [o.err(), n.err()].into_iter().flatten() {
                eprintln!("{e}");
            }
            return ExitCode::from(INVALID);
        }
    };
    let changes = policy::diff::diff(&old, &new);
    for c in &changes {
        println!("{c}");
    }
    if changes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    commit_memory_on_demand();
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `scopegate run`: the proxy, until it is stopped.
fn run(config: Option<PathBuf>, upgrade: bool) -> ExitCode {
    init_logging();
    let path = config.unwrap_or_else(config::default_path);
    let start = if upgrade {
        edge::server::Start::Upgrade
    } else {
        edge::server::Start::Fresh
    };
    match edge::server::run(&path, start) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, upgrade } => Ok(run(config, upgrade)),
        Command::Check { config } => Ok(check(&config.unwrap_or_else(config::default_path))),
        Command::Explain {
            config,
            method,
            target,
            host,
            token,
            scopes,
        } => {
            let path = config.unwrap_or_else(config::default_path);
            let snap = match compile::load(&path, 1) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let creds = match (&token, &scopes) {
                (Some(t), _) => explain::Credentials::Token(t),
                (None, Some(s)) => explain::Credentials::Scopes(s),
                (None, None) => explain::Credentials::None,
            };
            let text = explain::explain(&snap, &method, &target, host.as_deref(), creds);
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Test { config, cases } => Ok(policy_test(
            &config.unwrap_or_else(config::default_path),
            &cases,
        )),
        Command::Diff { old, new } => Ok(diff(&old, &new)),
        Command::Token { key, request } => {
            println!(
                "{}",
                mint::mint(&read(&key)?, &request, snapshot::unix_now())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::DpopProof { key, request } => {
            let pem = read(&key)?;
            let proof = scopegate::cli::dpop::dpop_proof(&pem, &request, snapshot::unix_now())?;
            println!("{proof}");
            Ok(ExitCode::SUCCESS)
        }
        Command::CertThumbprint { cert } => {
            println!(
                "{}",
                scopegate::cli::dpop::certificate_thumbprint(&read(&cert)?)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen {
            kid,
            ec,
            key_out,
            jwks_out,
        } => keygen(&kid, ec, &key_out, &jwks_out),
        Command::Openapi { command } => openapi(command),
        Command::Demo { listen } => {
            init_logging();
            demo::run(&listen)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// `scopegate keygen`: a signing key (RSA, or P-256 with `--ec`) and the JWKS publishing it.
fn keygen(
    kid: &str,
    ec: bool,
    key_out: &std::path::Path,
    jwks_out: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let (pem, jwks) = if ec {
        mint::generate_ec_key(kid)
    } else {
        mint::generate_rsa_key(kid)
    };
    std::fs::write(key_out, pem).with_context(|| format!("writing {}", key_out.display()))?;
    std::fs::write(jwks_out, jwks).with_context(|| format!("writing {}", jwks_out.display()))?;
    println!("wrote {} and {}", key_out.display(), jwks_out.display());
    Ok(ExitCode::SUCCESS)
}
