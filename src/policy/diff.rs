//! `scopegate diff OLD NEW`, and the log of every hot reload: two compiled configs compared by
//! what they allow, not by their text.
//!
//! Every route of either config is probed with the requests its template stands for, on each
//! host set of its API and for each of its methods: a `{name}` segment becomes a segment no
//! literal can equal (`{name}` itself); a `{*rest}` tail becomes more segments than any template
//! has, and one segment. Each probe is looked up in both configs by the router the proxy uses,
//! so a route that moved to a more general template is compared for the requests it now
//! matches, and a reordering that changes no lookup prints nothing.

use std::collections::BTreeSet;
use std::fmt;

use http::Method;

use crate::routing::{ClaimCondition, Expected, HostPattern, Lookup};
use crate::snapshot::{Accepts, Api, Mechanism, Route, Snapshot};

/// What kind of change a line reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// Requests that matched no route now match this one.
    RouteAdded,
    /// Requests that matched this route now match none.
    RouteRemoved,
    /// Fewer or weaker requirements.
    Widened,
    /// More or stronger requirements.
    Narrowed,
    /// Where the route forwards (`upstream`, `strip_prefix`).
    Changed,
}

impl ChangeKind {
    pub const ALL: [ChangeKind; 5] = [
        ChangeKind::RouteAdded,
        ChangeKind::RouteRemoved,
        ChangeKind::Widened,
        ChangeKind::Narrowed,
        ChangeKind::Changed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::RouteAdded => "+ route",
            ChangeKind::RouteRemoved => "- route",
            ChangeKind::Widened => "widened",
            ChangeKind::Narrowed => "narrowed",
            ChangeKind::Changed => "changed",
        }
    }
}

/// One line of `scopegate diff`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    /// The route's label: the new config's, the old one's for `- route`.
    pub route: String,
    /// Which of the route's requests, when not all of them (`for POST`, `on host a.example`),
    /// and the route that matched them before, when another one did.
    pub qualifiers: Vec<String>,
    /// What changed (none for `+ route` and `- route`).
    pub detail: Option<String>,
}

/// `widened contacts DELETE /contacts/{id}: scope delete:contacts removed`.
impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.route)?;
        if !self.qualifiers.is_empty() {
            write!(f, " ({})", self.qualifiers.join(", "))?;
        }
        match &self.detail {
            Some(d) => write!(f, ": {d}"),
            None => Ok(()),
        }
    }
}

/// A host set: a `hosts` entry, or `None` for the APIs without `hosts`.
type HostKey = Option<HostPattern>;

/// A method, or `None` for a route without `methods` (every method).
type MethodKey = Option<Method>;

/// Every change in who may do what from `old` to `new`, in the order of the new config's
/// routes, then the old config's.
pub fn diff(old: &Snapshot, new: &Snapshot) -> Vec<Change> {
    let depth = 1 + old
        .routes
        .iter()
        .chain(&new.routes)
        .map(|r| r.path.split('/').count())
        .max()
        .unwrap_or(0);
    let mut found = Findings::default();
    for snapshot in [new, old] {
        for route in &snapshot.routes {
            let methods: Vec<MethodKey> = if route.methods.is_empty() {
                vec![None]
            } else {
                route.methods.iter().cloned().map(Some).collect()
            };
            for host in host_keys(&snapshot.apis[route.api]) {
                for method in &methods {
                    for path in probes(&route.path, depth) {
                        let o = lookup(old, &host, method, &path);
                        let n = lookup(new, &host, method, &path);
                        found.probe(old, new, o, n, &host, method);
                    }
                }
            }
        }
    }
    found.render(old, new)
}

/// The host sets an API's routes are searched in.
fn host_keys(api: &Api) -> Vec<HostKey> {
    if api.hosts.is_empty() {
        vec![None]
    } else {
        api.hosts.iter().cloned().map(Some).collect()
    }
}

/// Paths that stand for the requests a template matches (see the module's comment).
fn probes(template: &str, depth: usize) -> Vec<String> {
    match template.rsplit_once('/') {
        Some((prefix, last)) if last.starts_with("{*") => {
            let name = last.trim_start_matches("{*").trim_end_matches('}');
            let one = format!("{prefix}/{{{name}}}");
            let segments = template.split('/').count();
            let deep =
                std::iter::repeat_n(format!("{{{name}}}"), depth.saturating_sub(segments) + 2)
                    .collect::<Vec<_>>()
                    .join("/");
            vec![format!("{prefix}/{deep}"), one]
        }
        _ => vec![template.to_string()],
    }
}

/// The route a probe matches in `snapshot`.
fn lookup(snapshot: &Snapshot, host: &HostKey, method: &MethodKey, path: &str) -> Option<usize> {
    let host = match host {
        None => None,
        Some(HostPattern::Exact(h)) => Some(h.clone()),
        // A label no exact name or longer suffix can equal.
        Some(HostPattern::Suffix(s)) => Some(format!("{{host}}.{s}")),
    };
    // A method no route names stands for "every method".
    let any = Method::from_bytes(b"ANY-METHOD").expect("a valid extension method");
    let method = method.as_ref().unwrap_or(&any);
    match snapshot
        .route_set(host.as_deref())
        .router
        .lookup(method, path)
    {
        Lookup::Found(r) => Some(r),
        _ => None,
    }
}

/// A line before it knows which of its route's requests it holds for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Finding {
    kind: ChangeKind,
    /// The route named, and whether it is one of the new config's.
    route: usize,
    in_new: bool,
    /// The old route, when another one than the one named matched these requests before.
    before: Option<String>,
    detail: Option<String>,
}

/// Findings in order of discovery, each with the (host set, method) probes it held for.
#[derive(Default)]
struct Findings(Vec<(Finding, Vec<(HostKey, MethodKey)>)>);

impl Findings {
    fn add(&mut self, finding: Finding, host: &HostKey, method: &MethodKey) {
        let at = match self.0.iter().position(|(f, _)| *f == finding) {
            Some(i) => i,
            None => {
                self.0.push((finding, Vec::new()));
                self.0.len() - 1
            }
        };
        let probes = &mut self.0[at].1;
        let probe = (host.clone(), method.clone());
        if !probes.contains(&probe) {
            probes.push(probe);
        }
    }

    fn probe(
        &mut self,
        old: &Snapshot,
        new: &Snapshot,
        o: Option<usize>,
        n: Option<usize>,
        host: &HostKey,
        method: &MethodKey,
    ) {
        let finding = |kind, route, in_new, before, detail| Finding {
            kind,
            route,
            in_new,
            before,
            detail,
        };
        match (o, n) {
            (None, None) => {}
            (None, Some(n)) => self.add(
                finding(ChangeKind::RouteAdded, n, true, None, None),
                host,
                method,
            ),
            (Some(o), None) => self.add(
                finding(ChangeKind::RouteRemoved, o, false, None, None),
                host,
                method,
            ),
            (Some(o), Some(n)) => {
                let (was, now) = (&old.routes[o], &new.routes[n]);
                let before = (was.label != now.label).then(|| was.label.clone());
                for (kind, detail) in compare(old, was, new, now) {
                    let f = finding(kind, n, true, before.clone(), Some(detail));
                    self.add(f, host, method);
                }
            }
        }
    }

    /// Lines, with the hosts and methods they hold for when not all of their route's.
    fn render(self, old: &Snapshot, new: &Snapshot) -> Vec<Change> {
        let mut out = Vec::new();
        for (f, probes) in self.0 {
            let snapshot = if f.in_new { new } else { old };
            let route = &snapshot.routes[f.route];
            let api = snapshot.apis[route.api].display_name();
            // The route's hosts in either config: a line for only some of them says which.
            let mut all_hosts: Vec<HostKey> = Vec::new();
            for s in [old, new] {
                for a in s.apis.iter().filter(|a| a.display_name() == api) {
                    for h in host_keys(a) {
                        if !all_hosts.contains(&h) {
                            all_hosts.push(h);
                        }
                    }
                }
            }
            let all_methods: Vec<MethodKey> = if route.methods.is_empty() {
                vec![None]
            } else {
                route.methods.iter().cloned().map(Some).collect()
            };
            let mut hosts: Vec<(HostKey, Vec<MethodKey>)> = Vec::new();
            for (h, m) in probes {
                match hosts.iter_mut().find(|(k, _)| *k == h) {
                    Some((_, ms)) => ms.push(m),
                    None => hosts.push((h, vec![m])),
                }
            }
            let same_methods = hosts.windows(2).all(|w| same_set(&w[0].1, &w[1].1));
            let covers_hosts = all_hosts.iter().all(|h| hosts.iter().any(|(k, _)| k == h));
            let groups: Vec<(Vec<HostKey>, Vec<MethodKey>)> = if same_methods {
                let methods = hosts[0].1.clone();
                vec![(hosts.into_iter().map(|(h, _)| h).collect(), methods)]
            } else {
                hosts.into_iter().map(|(h, ms)| (vec![h], ms)).collect()
            };
            let several = groups.len() > 1;
            for (hs, ms) in groups {
                let mut qualifiers = Vec::new();
                if !same_set(&ms, &all_methods) {
                    let names: Vec<&str> = ms
                        .iter()
                        .map(|m| m.as_ref().map_or("ANY", Method::as_str))
                        .collect();
                    qualifiers.push(format!("for {}", names.join(",")));
                }
                if several || !covers_hosts {
                    let names: Vec<String> = hs.iter().map(host_name).collect();
                    qualifiers.push(format!("on {}", names.join(", ")));
                }
                if let Some(b) = &f.before {
                    qualifiers.push(format!("before: {b}"));
                }
                out.push(Change {
                    kind: f.kind,
                    route: route.label.clone(),
                    qualifiers,
                    detail: f.detail.clone(),
                });
            }
        }
        out
    }
}

fn same_set<T: PartialEq>(a: &[T], b: &[T]) -> bool {
    a.iter().all(|x| b.contains(x)) && b.iter().all(|x| a.contains(x))
}

fn host_name(h: &HostKey) -> String {
    match h {
        Some(p) => format!("host {p}"),
        None => "hosts no API names".to_string(),
    }
}

/// What changed for the requests that matched `was` in `old` and match `now` in `new`.
fn compare(old: &Snapshot, was: &Route, new: &Snapshot, now: &Route) -> Vec<(ChangeKind, String)> {
    use ChangeKind::{Changed, Narrowed, Widened};
    let mut out = Vec::new();
    match (was.public, now.public) {
        (false, true) => out.push((Widened, "now public".to_string())),
        (true, false) => {
            let binding = required_binding(new, now)
                .map(|m| format!(" + a {m} binding"))
                .unwrap_or_default();
            out.push((
                Narrowed,
                format!("no longer public (requires {}{binding})", now.required),
            ))
        }
        (true, true) => {}
        (false, false) => out.extend(requirements(old, was, new, now)),
    }
    let (was_api, now_api) = (&old.apis[was.api], &new.apis[now.api]);
    let origins = |a: &Api| {
        a.cors
            .as_ref()
            .map(|c| c.origins.clone())
            .unwrap_or_default()
    };
    let (o, n) = (origins(was_api), origins(now_api));
    for added in n.iter().filter(|x| !o.contains(x)) {
        out.push((Widened, format!("CORS origin {added} added")));
    }
    for removed in o.iter().filter(|x| !n.contains(x)) {
        out.push((Narrowed, format!("CORS origin {removed} removed")));
    }
    let credentials = |a: &Api| a.cors.as_ref().is_some_and(|c| c.allow_credentials);
    match (credentials(was_api), credentials(now_api)) {
        (false, true) => out.push((Widened, "CORS credentials now allowed".into())),
        (true, false) => out.push((Narrowed, "CORS credentials no longer allowed".into())),
        _ => {}
    }
    out.extend(quotas(old, was, new, now));
    if !was.public && !now.public {
        out.extend(possession(old, was, new, now));
    }
    match (was.websocket, now.websocket) {
        (false, true) => out.push((Widened, "websocket upgrades now allowed".into())),
        (true, false) => out.push((Narrowed, "websocket upgrades no longer allowed".into())),
        _ => {}
    }
    let (up_was, up_now) = (
        &old.upstreams[was.upstream].name,
        &new.upstreams[now.upstream].name,
    );
    if up_was != up_now {
        out.push((Changed, format!("upstream {up_was} -> {up_now}")));
    }
    let prefix = |a: &Api| a.strip_prefix.clone().unwrap_or_else(|| "(none)".into());
    let (p_was, p_now) = (prefix(was_api), prefix(now_api));
    if p_was != p_now {
        out.push((Changed, format!("strip_prefix {p_was} -> {p_now}")));
    }
    out
}

/// Proof of possession (`[proof_of_possession]` of the route's API): a binding now or no longer
/// required, and what a DPoP proof must be (algorithms, age, a nonce).
fn possession(
    old: &Snapshot,
    was: &Route,
    new: &Snapshot,
    now: &Route,
) -> Vec<(ChangeKind, String)> {
    use std::cmp::Ordering::{Greater, Less};
    use ChangeKind::{Narrowed, Widened};
    let mut out = Vec::new();
    let (o, n) = (required_binding(old, was), required_binding(new, now));
    if o != n {
        if let Some(m) = o {
            out.push((Widened, format!("{m} binding no longer required")));
        }
        if let Some(m) = n {
            out.push((Narrowed, format!("{m} binding now required")));
        }
    }
    let (op, np) = (
        crate::sender::dpop_policy(old, Some(was.api)),
        crate::sender::dpop_policy(new, Some(now.api)),
    );
    let algs = |p: &crate::auth::dpop::DpopPolicy| -> Vec<String> {
        p.algorithms.iter().map(|a| format!("{a:?}")).collect()
    };
    let (oa, na) = (algs(op), algs(np));
    for a in na.iter().filter(|a| !oa.contains(a)) {
        out.push((Widened, format!("DPoP proof algorithm {a} added")));
    }
    for a in oa.iter().filter(|a| !na.contains(a)) {
        out.push((Narrowed, format!("DPoP proof algorithm {a} removed")));
    }
    let age = format!(
        "DPoP proofs taken up to {} s old (was {})",
        np.max_age, op.max_age
    );
    match op.max_age.cmp(&np.max_age) {
        Less => out.push((Widened, age)),
        Greater => out.push((Narrowed, age)),
        _ => {}
    }
    match (op.nonce, np.nonce) {
        (false, true) => out.push((Narrowed, "DPoP nonce now required".into())),
        (true, false) => out.push((Widened, "DPoP nonce no longer required".into())),
        _ => {}
    }
    out
}

/// The binding the API of `route` requires of its tokens, if any.
fn required_binding(s: &Snapshot, route: &Route) -> Option<&'static str> {
    s.apis[route.api]
        .pop
        .as_ref()
        .filter(|p| p.required)
        .map(|p| match p.mechanism {
            Mechanism::Dpop => "DPoP",
            Mechanism::Mtls => "mTLS certificate",
        })
}

/// The quotas a route is under, compared by name: one removed or raised (more requests per
/// second) widens, one added or lowered narrows, another key or methods changes.
fn quotas(old: &Snapshot, was: &Route, new: &Snapshot, now: &Route) -> Vec<(ChangeKind, String)> {
    use ChangeKind::{Changed, Narrowed, Widened};
    let mut out = Vec::new();
    let (o, n): (Vec<_>, Vec<_>) = (
        was.quotas.iter().map(|&q| &old.quotas[q]).collect(),
        now.quotas.iter().map(|&q| &new.quotas[q]).collect(),
    );
    for q in &o {
        match n.iter().find(|x| x.name == q.name) {
            None => out.push((Widened, format!("quota {} removed", q.name))),
            Some(x) => {
                let per =
                    |q: &crate::quota::Quota| format!("{} per {} s", q.limit, q.window_seconds);
                // Compare limit/window as fractions: more requests per second is wider.
                let (was_rate, now_rate) = (
                    q.limit as u128 * x.window_seconds as u128,
                    x.limit as u128 * q.window_seconds as u128,
                );
                if now_rate > was_rate {
                    out.push((
                        Widened,
                        format!("quota {} raised: {} -> {}", q.name, per(q), per(x)),
                    ));
                } else if now_rate < was_rate {
                    out.push((
                        Narrowed,
                        format!("quota {} lowered: {} -> {}", q.name, per(q), per(x)),
                    ));
                } else if q.window_seconds != x.window_seconds {
                    out.push((
                        Changed,
                        format!("quota {}: {} -> {}", q.name, per(q), per(x)),
                    ));
                }
                if q.key != x.key || !same_set(&q.methods, &x.methods) {
                    out.push((
                        Changed,
                        format!("quota {}: {} -> {}", q.name, q.describe(), x.describe()),
                    ));
                }
            }
        }
    }
    for x in n.iter().filter(|x| !o.iter().any(|q| q.name == x.name)) {
        out.push((Narrowed, format!("quota {} added", x.name)));
    }
    out
}

/// What a token must be and carry, for two routes that are not public.
fn requirements(
    old: &Snapshot,
    was: &Route,
    new: &Snapshot,
    now: &Route,
) -> Vec<(ChangeKind, String)> {
    use ChangeKind::{Narrowed, Widened};
    let mut out = Vec::new();
    match (was.report_only, now.report_only) {
        (false, true) => out.push((Widened, "now report_only".to_string())),
        (true, false) => out.push((Narrowed, "no longer report_only".to_string())),
        _ => {}
    }
    let (o, n) = (&was.required, &now.required);
    for s in o.all.iter().filter(|s| !n.all.contains(s)) {
        out.push((Widened, format!("scope {s} removed")));
    }
    for s in n.all.iter().filter(|s| !o.all.contains(s)) {
        out.push((Narrowed, format!("scope {s} added")));
    }
    // An empty `any_scopes` asks for nothing: growing it from empty is a new requirement.
    let one_of = |v: &[String]| format!("one of ({})", v.join(" | "));
    match (o.any.is_empty(), n.any.is_empty()) {
        (true, true) => {}
        (true, false) => out.push((Narrowed, format!("any_scopes added: {}", one_of(&n.any)))),
        (false, true) => out.push((Widened, format!("any_scopes removed: {}", one_of(&o.any)))),
        (false, false) => {
            for s in n.any.iter().filter(|s| !o.any.contains(s)) {
                out.push((Widened, format!("any_scopes {s} added")));
            }
            for s in o.any.iter().filter(|s| !n.any.contains(s)) {
                out.push((Narrowed, format!("any_scopes {s} removed")));
            }
        }
    }
    for c in was
        .conditions
        .iter()
        .filter(|c| !has_condition(&now.conditions, c))
    {
        out.push((
            Widened,
            format!("claim condition removed: {}", c.describe()),
        ));
    }
    for c in now
        .conditions
        .iter()
        .filter(|c| !has_condition(&was.conditions, c))
    {
        out.push((Narrowed, format!("claim condition added: {}", c.describe())));
    }
    out.extend(acceptance(old, &old.apis[was.api], new, &new.apis[now.api]));
    out
}

/// Only the shape counts: `{id}` and `{cid}` at one position are one condition.
fn has_condition(list: &[ClaimCondition], c: &ClaimCondition) -> bool {
    list.iter().any(|x| {
        x.claim == c.claim
            && match (&x.expected, &c.expected) {
                (Expected::Literal(a), Expected::Literal(b)) => a == b,
                (Expected::Param { slot: a, .. }, Expected::Param { slot: b, .. }) => a == b,
                _ => false,
            }
    })
}

/// The (issuer, audience) pairs a route's API takes tokens for.
fn accepted(snapshot: &Snapshot, api: &Api) -> BTreeSet<(String, String)> {
    let issuer = |i: usize| snapshot.verifier.issuers[i].issuer.clone();
    match &api.accepts {
        Accepts::PerIssuer(per_issuer) => per_issuer
            .iter()
            .enumerate()
            .flat_map(|(i, auds)| auds.iter().map(move |a| (issuer(i), a.clone())))
            .collect(),
        Accepts::Audience { audience, issuers } => issuers
            .iter()
            .map(|&i| (issuer(i), audience.clone()))
            .collect(),
    }
}

/// Issuers and audiences added or removed.
fn acceptance(old: &Snapshot, was: &Api, new: &Snapshot, now: &Api) -> Vec<(ChangeKind, String)> {
    use ChangeKind::{Narrowed, Widened};
    let (o, n) = (accepted(old, was), accepted(new, now));
    if o == n {
        return Vec::new();
    }
    let issuers = |s: &BTreeSet<(String, String)>| -> BTreeSet<String> {
        s.iter().map(|(i, _)| i.clone()).collect()
    };
    let audiences = |s: &BTreeSet<(String, String)>| -> BTreeSet<String> {
        s.iter().map(|(_, a)| a.clone()).collect()
    };
    let (oi, ni, oa, na) = (issuers(&o), issuers(&n), audiences(&o), audiences(&n));
    let mut out = Vec::new();
    for (kind, from, to, what) in [
        (Widened, &oi, &ni, "issuer"),
        (Narrowed, &ni, &oi, "issuer"),
    ]
    .into_iter()
    .chain([
        (Widened, &oa, &na, "audience"),
        (Narrowed, &na, &oa, "audience"),
    ]) {
        let verb = if kind == Widened { "added" } else { "removed" };
        for x in to.difference(from) {
            out.push((kind, format!("{what} {x} {verb}")));
        }
    }
    // Same issuers and audiences, paired differently (top-level routes: audiences per issuer).
    for (kind, from, to) in [(Widened, &o, &n), (Narrowed, &n, &o)] {
        let verb = if kind == Widened { "added" } else { "removed" };
        for (i, a) in to.difference(from) {
            if oi.contains(i) && ni.contains(i) && oa.contains(a) && na.contains(a) {
                out.push((kind, format!("audience {a} {verb} for issuer {i}")));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{build, parse_for_test, TEST_PREAMBLE};

    /// What `TEST_PREAMBLE` is followed by in `base()`.
    const REST: &str = r#"
[[issuers]]
issuer = "https://b.test/"
audiences = ["https://top.test"]
jwks_url = "https://b.test/jwks"

[upstreams.two]
servers = ["127.0.0.1:2"]

[[routes]]
methods = ["GET"]
path = "/health"
public = true
upstream = "one"

[apis.contacts]
audience = "https://contacts.test"
issuers = ["https://a.test/"]
hosts = ["api.test"]
upstream = "one"

[apis.contacts.cors]
origins = ["https://app.test"]

[[apis.contacts.routes]]
methods = ["GET"]
path = "/contacts/{id}"
scopes = ["read:contacts"]
claims = { org = "acme", sub = "{id}" }

[[apis.contacts.routes]]
methods = ["DELETE"]
path = "/contacts/{id}"
scopes = ["delete:contacts"]
any_scopes = ["admin", "owner"]
"#;

    fn snapshot(text: &str) -> Snapshot {
        build(&parse_for_test(text), 1).unwrap()
    }

    fn lines(old: &str, new: &str) -> Vec<String> {
        diff(&snapshot(old), &snapshot(new))
            .iter()
            .map(Change::to_string)
            .collect()
    }

    /// The config every test starts from.
    fn base() -> String {
        format!("{TEST_PREAMBLE}{REST}")
    }

    /// `base()` with `from` replaced by `to` (which must be there).
    fn edit(from: &str, to: &str) -> String {
        let base = base();
        assert!(base.contains(from), "{from:?} is not in the base config");
        base.replacen(from, to, 1)
    }

    const GET: &str = "contacts GET /contacts/{id}";
    const DELETE: &str = "contacts DELETE /contacts/{id}";

    /// What changes, the text replaced and its replacement, the lines from `base()` to the
    /// edited config, and the lines back.
    type Row = (
        &'static str,
        &'static str,
        &'static str,
        Vec<String>,
        Vec<String>,
    );

    /// A route of an API that requires a binding going from public to protected needs the
    /// binding too: the line says so (the binding lines of `possession` compare two protected
    /// routes only).
    #[test]
    fn a_route_no_longer_public_names_the_binding_its_api_requires() {
        let pop = "upstream = \"one\"\n\n[apis.contacts.proof_of_possession]\nmechanism = \"dpop\"\n\n[apis.contacts.cors]";
        let with_pop = edit("upstream = \"one\"\n\n[apis.contacts.cors]", pop);
        let rule = "scopes = [\"delete:contacts\"]\nany_scopes = [\"admin\", \"owner\"]";
        let public = with_pop.replacen(rule, "public = true", 1);
        assert_eq!(
            lines(&public, &with_pop),
            vec![format!(
                "narrowed {DELETE}: no longer public (requires delete:contacts + one of (admin | owner) + a DPoP binding)"
            )]
        );
        assert_eq!(
            lines(&with_pop, &public),
            vec![format!("widened {DELETE}: now public")]
        );
    }

    #[test]
    fn every_kind_of_change_both_ways() {
        let rows: Vec<Row> = vec![
            (
                "a scope removed",
                "scopes = [\"delete:contacts\"]",
                "scopes = []",
                vec![format!("widened {DELETE}: scope delete:contacts removed")],
                vec![format!("narrowed {DELETE}: scope delete:contacts added")],
            ),
            (
                "a one-word edit",
                "scopes = [\"delete:contacts\"]",
                "scopes = [\"read:contacts\"]",
                vec![
                    format!("widened {DELETE}: scope delete:contacts removed"),
                    format!("narrowed {DELETE}: scope read:contacts added"),
                ],
                vec![
                    format!("widened {DELETE}: scope read:contacts removed"),
                    format!("narrowed {DELETE}: scope delete:contacts added"),
                ],
            ),
            (
                "any_scopes grown",
                "any_scopes = [\"admin\", \"owner\"]",
                "any_scopes = [\"admin\", \"owner\", \"support\"]",
                vec![format!("widened {DELETE}: any_scopes support added")],
                vec![format!("narrowed {DELETE}: any_scopes support removed")],
            ),
            (
                "any_scopes dropped",
                "any_scopes = [\"admin\", \"owner\"]",
                "",
                vec![format!("widened {DELETE}: any_scopes removed: one of (admin | owner)")],
                vec![format!("narrowed {DELETE}: any_scopes added: one of (admin | owner)")],
            ),
            (
                "a quota of the API raised, for every route",
                "upstream = \"one\"\n\n[apis.contacts.cors]",
                "upstream = \"one\"\n\n[apis.contacts.quotas.per_user]\nkey = \"sub\"\nlimit = 10\nwindow_seconds = 60\n\n[apis.contacts.cors]",
                vec![
                    format!("narrowed {GET}: quota per_user added"),
                    format!("narrowed {DELETE}: quota per_user added"),
                ],
                vec![
                    format!("widened {GET}: quota per_user removed"),
                    format!("widened {DELETE}: quota per_user removed"),
                ],
            ),
            (
                "proof of possession required on the API, for every route",
                "upstream = \"one\"\n\n[apis.contacts.cors]",
                "upstream = \"one\"\n\n[apis.contacts.proof_of_possession]\nmechanism = \"dpop\"\n\n[apis.contacts.cors]",
                vec![
                    format!("narrowed {GET}: DPoP binding now required"),
                    format!("narrowed {DELETE}: DPoP binding now required"),
                ],
                vec![
                    format!("widened {GET}: DPoP binding no longer required"),
                    format!("widened {DELETE}: DPoP binding no longer required"),
                ],
            ),
            (
                "DPoP proofs held to more",
                "upstream = \"one\"\n\n[apis.contacts.cors]",
                "upstream = \"one\"\n\n[apis.contacts.proof_of_possession]\nmechanism = \"dpop\"\nrequired = false\ndpop_nonce = true\ndpop_max_age_seconds = 60\ndpop_algorithms = [\"ES256\"]\n\n[apis.contacts.cors]",
                vec![
                    format!("narrowed {GET}: DPoP proof algorithm EdDSA removed"),
                    format!("narrowed {GET}: DPoP proof algorithm PS256 removed"),
                    format!("narrowed {GET}: DPoP proof algorithm RS256 removed"),
                    format!("narrowed {GET}: DPoP proofs taken up to 60 s old (was 300)"),
                    format!("narrowed {GET}: DPoP nonce now required"),
                    format!("narrowed {DELETE}: DPoP proof algorithm EdDSA removed"),
                    format!("narrowed {DELETE}: DPoP proof algorithm PS256 removed"),
                    format!("narrowed {DELETE}: DPoP proof algorithm RS256 removed"),
                    format!("narrowed {DELETE}: DPoP proofs taken up to 60 s old (was 300)"),
                    format!("narrowed {DELETE}: DPoP nonce now required"),
                ],
                vec![
                    format!("widened {GET}: DPoP proof algorithm EdDSA added"),
                    format!("widened {GET}: DPoP proof algorithm PS256 added"),
                    format!("widened {GET}: DPoP proof algorithm RS256 added"),
                    format!("widened {GET}: DPoP proofs taken up to 300 s old (was 60)"),
                    format!("widened {GET}: DPoP nonce no longer required"),
                    format!("widened {DELETE}: DPoP proof algorithm EdDSA added"),
                    format!("widened {DELETE}: DPoP proof algorithm PS256 added"),
                    format!("widened {DELETE}: DPoP proof algorithm RS256 added"),
                    format!("widened {DELETE}: DPoP proofs taken up to 300 s old (was 60)"),
                    format!("widened {DELETE}: DPoP nonce no longer required"),
                ],
            ),
            (
                "a claim condition dropped",
                "claims = { org = \"acme\", sub = \"{id}\" }",
                "claims = { sub = \"{id}\" }",
                vec![format!(
                    "widened {GET}: claim condition removed: claim \"org\" must be \"acme\""
                )],
                vec![format!(
                    "narrowed {GET}: claim condition added: claim \"org\" must be \"acme\""
                )],
            ),
            (
                "now public",
                "scopes = [\"read:contacts\"]\nclaims = { org = \"acme\", sub = \"{id}\" }",
                "public = true",
                vec![format!("widened {GET}: now public")],
                vec![format!(
                    "narrowed {GET}: no longer public (requires read:contacts)"
                )],
            ),
            (
                "an API in report-only: one line per route",
                "upstream = \"one\"\n\n[apis.contacts.cors]",
                "upstream = \"one\"\nreport_only = true\n\n[apis.contacts.cors]",
                vec![
                    format!("widened {GET}: now report_only"),
                    format!("widened {DELETE}: now report_only"),
                ],
                vec![
                    format!("narrowed {GET}: no longer report_only"),
                    format!("narrowed {DELETE}: no longer report_only"),
                ],
            ),
            (
                "another audience",
                "audience = \"https://contacts.test\"",
                "audience = \"https://people.test\"",
                vec![
                    format!("widened {GET}: audience https://people.test added"),
                    format!("narrowed {GET}: audience https://contacts.test removed"),
                    format!("widened {DELETE}: audience https://people.test added"),
                    format!("narrowed {DELETE}: audience https://contacts.test removed"),
                ],
                vec![
                    format!("widened {GET}: audience https://contacts.test added"),
                    format!("narrowed {GET}: audience https://people.test removed"),
                    format!("widened {DELETE}: audience https://contacts.test added"),
                    format!("narrowed {DELETE}: audience https://people.test removed"),
                ],
            ),
            (
                "an issuer added",
                "issuers = [\"https://a.test/\"]",
                "issuers = [\"https://a.test/\", \"https://b.test/\"]",
                vec![
                    format!("widened {GET}: issuer https://b.test/ added"),
                    format!("widened {DELETE}: issuer https://b.test/ added"),
                ],
                vec![
                    format!("narrowed {GET}: issuer https://b.test/ removed"),
                    format!("narrowed {DELETE}: issuer https://b.test/ removed"),
                ],
            ),
            (
                "a CORS origin added, public routes included",
                "origins = [\"https://app.test\"]",
                "origins = [\"https://app.test\", \"https://admin.test\"]",
                vec![
                    format!("widened {GET}: CORS origin https://admin.test added"),
                    format!("widened {DELETE}: CORS origin https://admin.test added"),
                ],
                vec![
                    format!("narrowed {GET}: CORS origin https://admin.test removed"),
                    format!("narrowed {DELETE}: CORS origin https://admin.test removed"),
                ],
            ),
            (
                "CORS credentials",
                "origins = [\"https://app.test\"]",
                "origins = [\"https://app.test\"]\nallow_credentials = true",
                vec![
                    format!("widened {GET}: CORS credentials now allowed"),
                    format!("widened {DELETE}: CORS credentials now allowed"),
                ],
                vec![
                    format!("narrowed {GET}: CORS credentials no longer allowed"),
                    format!("narrowed {DELETE}: CORS credentials no longer allowed"),
                ],
            ),
            (
                "a public route no longer public",
                "path = \"/health\"\npublic = true",
                "path = \"/health\"",
                vec!["narrowed GET /health: no longer public (requires any valid token)".into()],
                vec!["widened GET /health: now public".into()],
            ),
            (
                "websocket",
                "any_scopes = [\"admin\", \"owner\"]",
                "any_scopes = [\"admin\", \"owner\"]\nwebsocket = true",
                vec![format!("widened {DELETE}: websocket upgrades now allowed")],
                vec![format!("narrowed {DELETE}: websocket upgrades no longer allowed")],
            ),
            (
                "a route added",
                "[[apis.contacts.routes]]\nmethods = [\"DELETE\"]",
                "[[apis.contacts.routes]]\nmethods = [\"POST\"]\npath = \"/contacts\"\n\n[[apis.contacts.routes]]\nmethods = [\"DELETE\"]",
                vec!["+ route contacts POST /contacts".into()],
                vec!["- route contacts POST /contacts".into()],
            ),
            (
                "a method added",
                "methods = [\"DELETE\"]",
                "methods = [\"DELETE\", \"POST\"]",
                vec!["+ route contacts DELETE,POST /contacts/{id} (for POST)".into()],
                vec!["- route contacts DELETE,POST /contacts/{id} (for POST)".into()],
            ),
            (
                "a host added",
                "hosts = [\"api.test\"]",
                "hosts = [\"api.test\", \"*.api.test\"]",
                vec![
                    format!("+ route {GET} (on host *.api.test)"),
                    format!("+ route {DELETE} (on host *.api.test)"),
                ],
                vec![
                    format!("- route {GET} (on host *.api.test)"),
                    format!("- route {DELETE} (on host *.api.test)"),
                ],
            ),
            (
                "a template made more general: reported for what it now matches",
                "methods = [\"DELETE\"]\npath = \"/contacts/{id}\"",
                "methods = [\"DELETE\"]\npath = \"/contacts/{*rest}\"",
                vec!["+ route contacts DELETE /contacts/{*rest}".into()],
                vec!["- route contacts DELETE /contacts/{*rest}".into()],
            ),
            (
                "a more general template with weaker scopes",
                "path = \"/contacts/{id}\"\nscopes = [\"delete:contacts\"]",
                "path = \"/contacts/{*rest}\"\nscopes = []",
                vec![
                    format!("+ route contacts DELETE /contacts/{{*rest}}"),
                    format!("widened contacts DELETE /contacts/{{*rest}} (before: {DELETE}): scope delete:contacts removed"),
                ],
                vec![
                    format!("narrowed {DELETE} (before: contacts DELETE /contacts/{{*rest}}): scope delete:contacts added"),
                    "- route contacts DELETE /contacts/{*rest}".into(),
                ],
            ),
            (
                "where a route forwards",
                "any_scopes = [\"admin\", \"owner\"]",
                "any_scopes = [\"admin\", \"owner\"]\nupstream = \"two\"",
                vec![format!("changed {DELETE}: upstream one -> two")],
                vec![format!("changed {DELETE}: upstream two -> one")],
            ),
            (
                "strip_prefix",
                "upstream = \"one\"\n\n[apis.contacts.cors]",
                "upstream = \"one\"\nstrip_prefix = \"/contacts\"\n\n[apis.contacts.cors]",
                vec![
                    format!("changed {GET}: strip_prefix (none) -> /contacts"),
                    format!("changed {DELETE}: strip_prefix (none) -> /contacts"),
                ],
                vec![
                    format!("changed {GET}: strip_prefix /contacts -> (none)"),
                    format!("changed {DELETE}: strip_prefix /contacts -> (none)"),
                ],
            ),
            (
                "a parameter renamed changes nothing",
                "path = \"/contacts/{id}\"\nscopes = [\"read:contacts\"]\nclaims = { org = \"acme\", sub = \"{id}\" }",
                "path = \"/contacts/{cid}\"\nscopes = [\"read:contacts\"]\nclaims = { org = \"acme\", sub = \"{cid}\" }",
                vec![],
                vec![],
            ),
        ];
        for (what, from, to, forward, backward) in rows {
            let edited = edit(from, to);
            assert_eq!(lines(&base(), &edited), forward, "{what}");
            assert_eq!(lines(&edited, &base()), backward, "{what}, reversed");
        }
    }

    #[test]
    fn a_quota_raised_widens_and_lowered_narrows() {
        let with = |limit: u32, window: u32| {
            edit(
                "upstream = \"one\"\n\n[apis.contacts.cors]",
                &format!("upstream = \"one\"\n\n[apis.contacts.quotas.q]\nkey = \"sub\"\nlimit = {limit}\nwindow_seconds = {window}\n\n[apis.contacts.cors]"),
            )
        };
        assert_eq!(
            lines(&with(10, 60), &with(20, 60)),
            vec![
                format!("widened {GET}: quota q raised: 10 per 60 s -> 20 per 60 s"),
                format!("widened {DELETE}: quota q raised: 10 per 60 s -> 20 per 60 s"),
            ]
        );
        assert_eq!(
            lines(&with(10, 60), &with(10, 120))[0],
            format!("narrowed {GET}: quota q lowered: 10 per 60 s -> 10 per 120 s")
        );
        assert!(lines(&with(10, 60), &with(10, 60)).is_empty());
    }

    #[test]
    fn a_reordering_changes_nothing() {
        let reordered = r#"
[server]
listen = "127.0.0.1:1"

[[issuers]]
issuer = "https://a.test/"
audiences = ["https://top.test"]
jwks_url = "https://a.test/jwks"

[[issuers]]
issuer = "https://b.test/"
audiences = ["https://top.test"]
jwks_url = "https://b.test/jwks"

[upstreams.two]
servers = ["127.0.0.1:2"]

[upstreams.one]
servers = ["127.0.0.1:1"]

[apis.contacts]
audience = "https://contacts.test"
issuers = ["https://a.test/"]
hosts = ["api.test"]
upstream = "one"

[apis.contacts.cors]
origins = ["https://app.test"]

[[apis.contacts.routes]]
methods = ["DELETE"]
path = "/contacts/{id}"
scopes = ["delete:contacts"]
any_scopes = ["owner", "admin"]

[[apis.contacts.routes]]
methods = ["GET"]
path = "/contacts/{id}"
scopes = ["read:contacts"]
claims = { sub = "{id}", org = "acme" }

[[routes]]
methods = ["GET"]
path = "/health"
public = true
upstream = "one"
"#;
        assert_eq!(lines(&base(), reordered), Vec::<String>::new());
        assert_eq!(lines(reordered, &base()), Vec::<String>::new());
        assert_eq!(lines(&base(), &base()), Vec::<String>::new());
    }

    #[test]
    fn a_specific_route_carved_out_of_a_general_one_is_compared_with_it() {
        let carved = edit(
            "[[apis.contacts.routes]]\nmethods = [\"DELETE\"]",
            "[[apis.contacts.routes]]\nmethods = [\"GET\"]\npath = \"/contacts/me\"\npublic = true\n\n[[apis.contacts.routes]]\nmethods = [\"DELETE\"]",
        );
        assert_eq!(
            lines(&base(), &carved),
            vec![format!(
                "widened contacts GET /contacts/me (before: {GET}): now public"
            )]
        );
    }

    #[test]
    fn probes_stand_for_one_segment_and_more_than_any_template_has() {
        assert_eq!(probes("/a/{id}/b", 4), vec!["/a/{id}/b"]);
        assert_eq!(
            probes("/a/{*rest}", 4),
            vec!["/a/{rest}/{rest}/{rest}", "/a/{rest}"]
        );
        let kinds: Vec<&str> = ChangeKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            kinds,
            ["+ route", "- route", "widened", "narrowed", "changed"]
        );
    }
}
