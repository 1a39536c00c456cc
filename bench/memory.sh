#!/usr/bin/env bash
# Resident memory of scopegate (release build): idle with config/scopegate.toml, and idle with a
# generated scope map of 10,000 routes (after one request through each of 100 of them).
#   ./bench/memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin scopegate >/dev/null
bin="$PWD/target/release/scopegate"
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 1 400); do curl -fs "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "not ready" >&2; exit 1; }
rss() { awk '/^(VmRSS|VmHWM|RssAnon|RssFile):/ {printf "%s %.1f MB  ", $1, $2/1024}' "/proc/$1/status"; echo; }

# 1. The shipped example config as it is (only the port moved), idle once it answers.
listen=$(free_port)
sed -e "s|^listen = .*|listen = \"127.0.0.1:$listen\"|" config/scopegate.toml > "$dir/scopegate.toml"
cp config/jwks.json "$dir/"
"$bin" run --config "$dir/scopegate.toml" 2>/dev/null & pid=$!
for _ in $(seq 1 200); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$listen/contacts")" = 401 ] && break
  sleep 0.05
done
echo -n "config/scopegate.toml, idle:       "; rss $pid
kill $pid; wait $pid 2>/dev/null || true

# 2. 10,000 routes.
listen=$(free_port); admin=$(free_port)
python3 - "$dir" "$listen" "$admin" <<'PY'
import sys
d, listen, admin = sys.argv[1], sys.argv[2], sys.argv[3]
out = [f'[server]\nlisten = "127.0.0.1:{listen}"\nadmin_listen = "127.0.0.1:{admin}"\nupgrade_socket = "{d}/b.sock"\naccess_log = "off"\n',
       '[[issuers]]\nissuer = "https://issuer.scopegate.local/"\naudiences = ["https://contacts.example"]\njwks_file = "jwks.json"\n',
       '[upstreams.api]\nservers = ["127.0.0.1:9"]\n']
for i in range(10_000):
    out.append(f'[[routes]]\nmethods = ["GET", "DELETE"]\npath = "/r{i // 100}/items{i}/{{id}}"\nscopes = ["read:r{i % 50}"]\n')
open(f"{d}/routes.toml", "w").write("\n".join(out))
PY
"$bin" run --config "$dir/routes.toml" 2>/dev/null & pid=$!
wait_ready "$admin"
for i in $(seq 0 100 9999); do curl -s -o /dev/null "http://127.0.0.1:$listen/r$((i / 100))/items$i/7"; done
echo -n "10,000 routes, idle after traffic: "; rss $pid
kill $pid; wait $pid 2>/dev/null || true

# 3. Idle client connections, per connection: plain HTTP/1.1 and HTTPS/1.1 after one request each
# (kept alive), HTTP/2 after the connection preface (TLS 1.3, ECDSA P-256), each in a fresh process.
# 10,000 of each where the open-files limit allows it (scopegate counts an upstream descriptor
# per client connection, so it needs about twice as many): raised to 21,000 where allowed.
[ "$(ulimit -n)" -lt 21000 ] && { ulimit -n 21000 2>/dev/null || ulimit -n "$(ulimit -Hn)"; }
n=$(( $(ulimit -n) / 2 - 500 )); [ "$n" -gt 10000 ] && n=10000
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
  -keyout "$dir/tls.key" -out "$dir/tls.crt" 2>/dev/null
for mode in plain h1 h2; do
  listen=$(free_port); admin=$(free_port)
  tls=""; [ "$mode" != plain ] && tls=$'[server.tls]\ncert = "tls.crt"\nkey = "tls.key"\n'
  cat > "$dir/idle.toml" <<TOML
[server]
listen = "127.0.0.1:$listen"
admin_listen = "127.0.0.1:$admin"
upgrade_socket = "$dir/c.sock"
access_log = "off"
max_connections = 12000
$tls
[[issuers]]
issuer = "https://issuer.scopegate.local/"
audiences = ["https://contacts.example"]
jwks_file = "jwks.json"

[upstreams.api]
servers = ["127.0.0.1:9"]

[[routes]]
methods = ["GET"]
path = "/contacts"
scopes = ["read:contacts"]
TOML
  "$bin" run --config "$dir/idle.toml" 2>/dev/null & pid=$!
  wait_ready "$admin"
  python3 bench/idle_connections.py "$listen" "$pid" "$n" "$mode"
  kill $pid; wait $pid 2>/dev/null || true
done
