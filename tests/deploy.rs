//! What ships besides the binary, each part built or checked for real: the container image
//! (built with buildah on a Debian base made here, then run), the Kubernetes manifests
//! (kubernetes-validate against the Kubernetes OpenAPI schemas, and the kubelet's ConfigMap
//! update replayed against a running scopegate), the Grafana dashboard (every query evaluated
//! by a real Prometheus scraping scopegate under traffic) and the alerting rules (promtool).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn tool(name: &str, install: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is needed for this test: {install} (.ci/run does)"
    );
    name.to_string()
}

#[test]
fn kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    let validate = tool(
        "kubernetes-validate",
        "pip install kubernetes-validate==1.34.1",
    );
    let files: Vec<PathBuf> = std::fs::read_dir(repo("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    let out = Command::new(validate)
        .args(["--strict", "-k", "1.34.0"])
        .args(&files)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for kind in [
        "configmap/",
        "deployment/",
        "service/",
        "horizontalpodautoscaler/",
        "poddisruptionbudget/",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}")),
            "{kind}: {text}"
        );
    }
    // What the schemas cannot say.
    let read = |f: &str| std::fs::read_to_string(repo(&format!("deploy/kubernetes/{f}"))).unwrap();
    let kustomization = read("kustomization.yaml");
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        if name != "kustomization.yaml" {
            assert!(
                kustomization.contains(&format!("- {name}")),
                "{name} is not in the kustomization"
            );
        }
    }
    let deployment = read("deployment.yaml");
    assert!(
        !deployment.contains("subPath"),
        "a subPath mount never sees ConfigMap updates"
    );
    for want in [
        "path: /readyz",
        "path: /healthz",
        "readOnlyRootFilesystem: true",
        "runAsNonRoot: true",
        "drop: [\"ALL\"]",
        "preStop:",
        "replicas: 2",
    ] {
        assert!(deployment.contains(want), "{want}");
    }
    let monitor = read("servicemonitor.yaml");
    assert!(monitor.contains("port: admin") && read("service.yaml").contains("name: admin"));
    // The ConfigMap's scope map is one scopegate accepts (with an upstream this machine resolves).
    let configmap = read("configmap.yaml");
    let toml: String = configmap
        .split("scopegate.toml: |\n")
        .nth(1)
        .unwrap()
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .map(|l| {
            format!(
                "{}\n",
                l.replace("contacts.default.svc.cluster.local", "127.0.0.1")
            )
        })
        .collect();
    let (ok, _, err, _, _) = check(&toml, &[]);
    assert!(ok, "{err}\n{toml}");
}

/// The kubelet's update of a ConfigMap volume: the files are symlinks into `..data`, itself a
/// symlink to a timestamped directory; an update writes a new directory, points `..data_tmp`
/// at it, renames that over `..data` (atomic), and removes the old directory.
#[test]
fn a_kubelet_configmap_update_is_reloaded_without_a_restart() {
    let upstream = start_echo("a");
    let (port, admin) = (free_port(), free_port());
    let volume = tempfile::tempdir().unwrap();
    let v = volume.path();
    let write_version = |name: &str, scope: &str| {
        let dir = v.join(name);
        std::fs::create_dir(&dir).unwrap();
        let text = config_full(
            port,
            Some(admin),
            &[upstream],
            &file_issuer().replace("jwks.json", &format!("{}/jwks.json", v.display())),
            "",
        )
        .replacen(
            "path = \"/contacts\"\nscopes = [\"read:contacts\"]",
            &format!("path = \"/contacts\"\nscopes = [\"{scope}\"]"),
            1,
        );
        std::fs::write(dir.join("scopegate.toml"), text).unwrap();
        std::fs::write(dir.join("jwks.json"), &key().jwks).unwrap();
    };
    write_version("..2026_11_23_10_00_00.000000001", "read:contacts");
    std::os::unix::fs::symlink("..2026_11_23_10_00_00.000000001", v.join("..data")).unwrap();
    for f in ["scopegate.toml", "jwks.json"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), v.join(f)).unwrap();
    }
    let log = v.join("..log");
    let child = Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["run", "--config"])
        .arg(v.join("scopegate.toml"))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn_group()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let get = |t: &str| {
        Client::connect(addr)
            .send(
                format!(
                    "GET /contacts HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {t}\r\n\r\n"
                )
                .as_bytes(),
            )
            .status
    };
    assert!(eventually(20, || std::net::TcpStream::connect(addr).is_ok()));
    let (reader, writer) = (token("read:contacts"), token("write:contacts"));
    assert_eq!((get(&reader), get(&writer)), (200, 403));

    write_version("..2026_11_23_10_05_00.000000002", "write:contacts");
    std::os::unix::fs::symlink("..2026_11_23_10_05_00.000000002", v.join("..data_tmp")).unwrap();
    std::fs::rename(v.join("..data_tmp"), v.join("..data")).unwrap();
    std::fs::remove_dir_all(v.join("..2026_11_23_10_00_00.000000001")).unwrap();

    let swapped = eventually(10, || get(&writer) == 200);
    drop(child);
    assert!(
        swapped,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn the_container_image_builds_and_serves() {
    let buildah = tool("buildah", "apt-get install buildah");
    tool("debootstrap", "apt-get install debootstrap");
    // The base image the Dockerfile names, made from Debian's packages.
    let base = Command::new(repo("deploy/container/base-image.sh"))
        .status()
        .unwrap();
    assert!(base.success(), "deploy/container/base-image.sh failed");
    // The build context: the Dockerfile and its files, and this test's binary (stripped) as the
    // documented PREBUILT build argument, so the image holds the code under test.
    let ctx = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ctx.path().join("deploy/container")).unwrap();
    std::fs::copy(repo("Dockerfile"), ctx.path().join("Dockerfile")).unwrap();
    for f in ["scopegate.toml", "jwks.json"] {
        std::fs::copy(
            repo(&format!("deploy/container/{f}")),
            ctx.path().join("deploy/container").join(f),
        )
        .unwrap();
    }
    let stripped = Command::new("strip")
        .args(["-o"])
        .arg(ctx.path().join("scopegate"))
        .arg(env!("CARGO_BIN_EXE_scopegate"))
        .status()
        .unwrap();
    assert!(stripped.success());
    let tag = format!("localhost/scopegate-test:{}", std::process::id());
    let built = Command::new(&buildah)
        .args([
            "build",
            "--isolation",
            "chroot",
            "-q",
            "--build-arg",
            "BUILDER_IMAGE=docker.io/library/debian:bookworm-slim",
            "--build-arg",
            "PREBUILT=scopegate",
            "-t",
            &tag,
        ])
        .arg(ctx.path())
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let image = BuildahObject::new(&buildah, "rmi", tag.clone());
    let inspect = |format: &str| {
        let out = Command::new(&buildah)
            .args(["inspect", "--type", "image", "--format", format, &tag])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(inspect("{{.OCIv1.Config.User}}"), "65532:65532");
    assert_eq!(
        inspect("{{.OCIv1.Config.Entrypoint}}"),
        "[/usr/local/bin/scopegate]"
    );
    assert!(
        inspect("{{.OCIv1.Config.Env}}").contains("SCOPEGATE_CONFIG=/etc/scopegate/scopegate.toml")
    );
    assert!(
        inspect("{{.OCIv1.Config.Labels}}").contains("org.opencontainers.image.title:scopegate")
    );

    // Run the entrypoint with a mounted config (listening on this machine's loopback).
    let upstream = start_echo("a");
    let (port, admin) = (free_port(), free_port());
    let conf = tempfile::tempdir().unwrap();
    let text = config_full(port, Some(admin), &[upstream], &file_issuer(), "");
    std::fs::write(conf.path().join("scopegate.toml"), text).unwrap();
    std::fs::write(conf.path().join("jwks.json"), &key().jwks).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for p in [
        conf.path().to_path_buf(),
        conf.path().join("scopegate.toml"),
        conf.path().join("jwks.json"),
    ] {
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let ctr = Command::new(&buildah)
        .args(["from", "-q", &tag])
        .output()
        .unwrap();
    let ctr = BuildahObject::new(&buildah, "rm", String::from_utf8_lossy(&ctr.stdout).trim());
    let entrypoint = inspect("{{index .OCIv1.Config.Entrypoint 0}}");
    // `buildah run` is the leader of the group that holds buildah-chroot-exec and the proxy.
    let run = Command::new(&buildah)
        .args(["run", "--isolation", "chroot", "-v"])
        .arg(format!("{}:/etc/scopegate:ro", conf.path().display()))
        .args([&ctr.name, "--", &entrypoint, "run"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn_group()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let up = eventually(30, || std::net::TcpStream::connect(addr).is_ok());
    let send = |t: Option<&str>, method: &str| {
        let auth = t
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        Client::connect(addr)
            .send(
                format!("{method} /contacts/1 HTTP/1.1\r\nHost: api.test\r\n{auth}\r\n").as_bytes(),
            )
            .status
    };
    let statuses = up.then(|| {
        let reader = token("read:contacts");
        (
            send(Some(&reader), "GET"),
            send(None, "GET"),
            send(Some(&reader), "DELETE"),
        )
    });
    drop(run);
    drop(ctr);
    let size = inspect("{{.Size}}");
    drop(image);
    assert_eq!(statuses, Some((200, 401, 403)));
    eprintln!("image size with this test's binary: {size} bytes");
}

#[test]
fn the_alerting_rules_pass_promtool() {
    let promtool = tool("promtool", "apt-get install prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(repo("deploy/prometheus"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// An image or a working container, removed (`buildah rmi`, `buildah rm`) when dropped.
struct BuildahObject {
    buildah: String,
    remove: &'static str,
    name: String,
}

impl BuildahObject {
    fn new(buildah: &str, remove: &'static str, name: impl Into<String>) -> BuildahObject {
        BuildahObject {
            buildah: buildah.to_string(),
            remove,
            name: name.into(),
        }
    }
}

impl Drop for BuildahObject {
    fn drop(&mut self) {
        let _ = Command::new(&self.buildah)
            .args([self.remove, &self.name])
            .output();
    }
}

/// Every query of the Grafana dashboard, evaluated by a real Prometheus that scrapes a
/// scopegate under traffic (allowed, refused, rejected tokens, a dead upstream, a failing JWKS
/// URL and a failed reload), must run without error and return at least one series.
#[test]
fn every_dashboard_query_returns_series_in_prometheus() {
    let prometheus = tool("prometheus", "apt-get install prometheus");
    let upstream = start_echo("a");
    let (port, admin, prom_port) = (free_port(), free_port(), free_port());
    let issuers = format!(
        "{}\n[[issuers]]\nissuer = \"https://down.test/\"\naudiences = [\"{AUD}\"]\njwks_url = \"http://127.0.0.1:1/keys\"\nrefresh_min_seconds = 1\n",
        file_issuer()
    );
    // A second upstream that refuses connections: every route names its upstream then.
    let dead = format!("\n[upstreams.dead]\nservers = [\"{}\"]\n[[routes]]\nmethods = [\"GET\"]\npath = \"/dead\"\nupstream = \"dead\"\n", dead_addr());
    let text = config_full(port, Some(admin), &[upstream], &issuers, "")
        .replace("[[routes]]\n", "[[routes]]\nupstream = \"contacts\"\n")
        + &dead;
    let p = Proxy::start(&text, port);
    // A failed reload: an invalid edit, then the good file back.
    let good = std::fs::read_to_string(p.config_path()).unwrap();
    std::fs::write(
        p.config_path(),
        good.replacen("[server]", "[server]\nbogus = 1", 1),
    )
    .unwrap();
    let metrics =
        || String::from_utf8_lossy(&http_get(admin_addr(admin), "/metrics").body).into_owned();
    assert!(eventually(10, || metric(
        &metrics(),
        "scopegate_config_reloads_total{result=\"error\"}"
    ) >= 1.0));
    std::fs::write(p.config_path(), &good).unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: scopegate\n    static_configs:\n      - targets: ['127.0.0.1:{admin}']\n"),
    )
    .unwrap();
    let _prom = Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_group()
        .unwrap();
    let prom: std::net::SocketAddr = format!("127.0.0.1:{prom_port}").parse().unwrap();
    assert!(eventually(30, || std::net::TcpStream::connect(prom)
        .is_ok()
        && http_get(prom, "/-/ready").status == 200));

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/scopegate.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "30s")
                .replace("$instance", ".*")
        })
        .collect();
    assert!(exprs.len() >= 9);
    let query = |e: &str| -> serde_json::Value {
        let q: String = e
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        http_get(prom, &format!("/api/v1/query?query={q}")).json()
    };
    let reader = token("read:contacts");
    let mut answers = Vec::new();
    let all_have_series = eventually(90, || {
        // Traffic of every kind, between evaluations.
        for _ in 0..5 {
            p.get("/contacts", Some(&reader));
            p.get("/contacts", None);
            p.get("/contacts", Some("not.a.token"));
            p.request("DELETE", "/contacts/1", Some(&reader), "");
            p.get("/dead", Some(&reader));
        }
        answers = exprs.iter().map(|e| (e.clone(), query(e))).collect();
        answers.iter().all(|(_, a)| {
            a["status"] == "success"
                && a["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
        })
    });
    let failing: Vec<String> = answers
        .iter()
        .filter(|(_, a)| {
            !(a["status"] == "success"
                && a["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty()))
        })
        .map(|(e, a)| format!("{e} -> {a}"))
        .collect();
    assert!(
        all_have_series,
        "queries without series or with errors:\n{}",
        failing.join("\n")
    );
}
