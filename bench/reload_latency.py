#!/usr/bin/env python3
"""Time from writing a config file to the proxy serving it, for a 1,000-route config.

Starts target/release/scopegate (build it first: cargo build --release), rewrites its config
atomically (write + rename, as editors and config management do) N times, and polls
scopegate_config_generation on the admin port until the new generation shows.

    cargo build --release && python3 bench/reload_latency.py [ROUTES] [RELOADS]
"""
import os, shutil, socket, statistics, subprocess, sys, tempfile, time, urllib.request

routes = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
reloads = int(sys.argv[2]) if len(sys.argv) > 2 else 20
binary = os.environ.get("SCOPEGATE_BIN", "target/release/scopegate")

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

d = tempfile.mkdtemp()
subprocess.run([binary, "keygen", "--kid", "k", "--key-out", f"{d}/k.pem", "--jwks-out", f"{d}/jwks.json"], check=True, stdout=subprocess.DEVNULL)
port, admin = free_port(), free_port()

def config(scope_suffix):
    lines = ["[server]", f'listen = "127.0.0.1:{port}"', f'admin_listen = "127.0.0.1:{admin}"', "threads = 1",
             "[[issuers]]", 'issuer = "https://issuer.scopegate.local/"', 'audiences = ["https://contacts.example"]',
             'jwks_file = "jwks.json"', "[upstreams.api]", 'servers = ["127.0.0.1:9"]']
    for i in range(routes):
        m, p = [("GET", f"/svc{i//3}/items"), ("DELETE", f"/svc{i//3}/items/{{id}}"), ("GET", f"/svc{i//3}/files/{{*rest}}")][i % 3]
        lines += ["[[routes]]", f'methods = ["{m}"]', f'path = "{p}"', f'scopes = ["svc{i//3}:{scope_suffix}"]']
    return "\n".join(lines) + "\n"

cfg = f"{d}/scopegate.toml"
open(cfg, "w").write(config("read"))
proc = subprocess.Popen([binary, "run", "--config", cfg], env=dict(os.environ, RUST_LOG="warn"))
try:
    def generation():
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2).read().decode()
        except OSError:
            return None
        return int(next(l for l in text.splitlines() if l.startswith("scopegate_config_generation ")).split()[1])
    deadline = time.time() + 20
    while generation() is None:
        if time.time() > deadline: sys.exit("scopegate did not start")
        time.sleep(0.05)
    samples = []
    for i in range(reloads):
        g = generation()
        open(f"{d}/next.toml", "w").write(config("write" if i % 2 == 0 else "read"))
        t0 = time.perf_counter()
        os.rename(f"{d}/next.toml", cfg)
        while generation() == g:
            time.sleep(0.0005)
        samples.append((time.perf_counter() - t0) * 1000)
    print(f"{routes} routes, file write -> swap: median {statistics.median(samples):.1f} ms, "
          f"min {min(samples):.1f} ms, max {max(samples):.1f} ms over {reloads} reloads "
          f"(includes the 50 ms debounce)")
finally:
    proc.terminate(); proc.wait(); shutil.rmtree(d)
