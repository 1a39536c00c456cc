//! Method + path -> route, through a radix tree (matchit): lookup cost follows the path's
//! length, not the number of routes.

use std::borrow::Cow;

use http::Method;

/// The outcome of a route lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<'a> {
    Found(usize),
    /// The path has routes, none for this method; the value is the `Allow` header.
    MethodNotAllowed(Cow<'a, str>),
    NotFound,
}

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("invalid path template {path:?}: {reason}")]
    BadTemplate { path: String, reason: String },
    #[error("duplicate route: {method} {path} is already defined by route #{other}")]
    Duplicate {
        method: String,
        path: String,
        other: usize,
    },
}

/// The routes sharing one path template.
#[derive(Debug, Default)]
struct PathEntry {
    by_method: Vec<(Method, usize)>,
    any_method: Option<usize>,
    /// Per segment: 0 literal, 1 `{name}`, 2 `{*rest}`; lower is more specific.
    rank: Vec<u8>,
}

impl PathEntry {
    fn route_for(&self, method: &Method) -> Option<usize> {
        self.by_method
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, r)| *r)
            .or(self.any_method)
    }
}

/// Two radix trees: templates ending in `{*rest}` live in their own, because matchit will not
/// hold `{name}` and `{*rest}` at the same position, and the SPEC wants both ("a literal segment
/// beats `{name}`, which beats `{*rest}`").
#[derive(Debug, Default)]
struct Trees {
    exact: matchit::Router<usize>,
    tails: matchit::Router<usize>,
    has_tails: bool,
}

impl Trees {
    fn insert(&mut self, canonical: &str, entry: usize) -> Result<(), matchit::InsertError> {
        let is_tail = canonical.contains("{*");
        self.has_tails |= is_tail;
        let tree = if is_tail {
            &mut self.tails
        } else {
            &mut self.exact
        };
        tree.insert(canonical, entry)
    }

    /// The entry of the most specific template matching `path`.
    fn best<'e>(&self, path: &str, entries: &'e [PathEntry]) -> Option<&'e PathEntry> {
        let exact = self.exact.at(path).ok().map(|m| &entries[*m.value]);
        let tail = if self.has_tails {
            self.tails.at(path).ok().map(|m| &entries[*m.value])
        } else {
            None
        };
        match (exact, tail) {
            (Some(e), Some(t)) if t.rank < e.rank => Some(t),
            (Some(e), _) => Some(e),
            (None, t) => t,
        }
    }
}

#[derive(Debug, Default)]
pub struct Router {
    /// Every template.
    all: Trees,
    /// The templates with a route for a method (`None`: for every method), each method's in
    /// trees of their own: where a request goes when the most specific template has no route for
    /// its method (SPEC step 6: a 405 only when no route of the path takes the method).
    by_method: Vec<(Option<Method>, Trees)>,
    /// Methods every template has a route for, which need no trees: the most specific template
    /// always takes them.
    universal: Vec<Option<Method>>,
    entries: Vec<PathEntry>,
    /// Template -> entry, while building.
    paths: std::collections::HashMap<String, usize>,
}

impl Router {
    /// Done inserting: each method's trees are built (lookups fall back on them only once this
    /// is done), the build-time index goes, and the tables keep only what they hold.
    pub fn finish(&mut self) -> Result<(), RouterError> {
        // Each method's templates in trees of their own, but for the methods every template has.
        let keys = |e: &PathEntry| -> Vec<Option<Method>> {
            let any = e.any_method.map(|_| None);
            e.by_method
                .iter()
                .map(|(m, _)| Some(m.clone()))
                .chain(any)
                .collect()
        };
        let mut counts: Vec<(Option<Method>, usize)> = Vec::new();
        for key in self.entries.iter().flat_map(keys) {
            match counts.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => counts.push((key, 1)),
            }
        }
        let templates = self.entries.len();
        let (universal, partial): (Vec<_>, Vec<_>) =
            counts.into_iter().partition(|&(_, n)| n == templates);
        self.universal = universal.into_iter().map(|(k, _)| k).collect();
        self.by_method = partial
            .into_iter()
            .map(|(k, _)| (k, Trees::default()))
            .collect();
        let mut templates: Vec<(&String, &usize)> = self.paths.iter().collect();
        templates.sort_unstable_by_key(|&(_, &i)| i);
        for (canonical, &i) in templates {
            for key in keys(&self.entries[i]) {
                if let Some((_, trees)) = self.by_method.iter_mut().find(|(k, _)| *k == key) {
                    trees
                        .insert(canonical, i)
                        .map_err(|e| RouterError::BadTemplate {
                            path: canonical.clone(),
                            reason: e.to_string(),
                        })?;
                }
            }
        }
        self.paths = std::collections::HashMap::new();
        self.entries.shrink_to_fit();
        for entry in &mut self.entries {
            entry.by_method.shrink_to_fit();
            entry.rank.shrink_to_fit();
        }
        Ok(())
    }
}

/// Parameters named by position (`{p2}`, `{*tail}`), so names never clash.
fn canonical(path: &str) -> String {
    path.split('/')
        .enumerate()
        .map(|(i, seg)| match seg.strip_prefix('{') {
            Some(rest) if rest.starts_with('*') => "{*tail}".to_string(),
            Some(_) => format!("{{p{i}}}"),
            None => seg.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn rank_of(path: &str) -> Vec<u8> {
    path[1..]
        .split('/')
        .map(|seg| match seg.strip_prefix('{') {
            Some(rest) if rest.starts_with('*') => 2,
            Some(_) => 1,
            None => 0,
        })
        .collect()
}

/// Templates use `{name}` for one segment and `{*rest}` for the tail, matchit's own syntax; we
/// still check them so an error names the template rather than matchit internals.
fn check_template(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("a path template must start with '/'".into());
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        if seg.contains('{') || seg.contains('}') {
            let inner = seg
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .filter(|s| !s.is_empty() && !s.contains('{') && !s.contains('}'));
            let Some(inner) = inner else {
                return Err(format!(
                    "segment {seg:?}: a parameter must be a whole segment, like {{id}} or {{*rest}}"
                ));
            };
            if let Some(name) = inner.strip_prefix('*') {
                if i != segments.len() - 1 {
                    return Err(format!("{{*{name}}} must be the last segment"));
                }
                if name.is_empty() {
                    return Err("a tail parameter needs a name, like {*rest}".into());
                }
            }
        } else if *seg == "." || *seg == ".." || seg.contains('%') || seg.contains('\\') {
            return Err(format!(
                "segment {seg:?} can never match a normalized path (no dot segments or escapes)"
            ));
        } else if seg.is_empty() && i != segments.len() - 1 {
            return Err("empty segment ('//') can never match a normalized path".into());
        }
    }
    Ok(())
}

impl Router {
    /// Add a route. `methods` empty means every method.
    pub fn insert(
        &mut self,
        path: &str,
        methods: &[Method],
        route: usize,
    ) -> Result<(), RouterError> {
        check_template(path).map_err(|reason| RouterError::BadTemplate {
            path: path.to_string(),
            reason,
        })?;
        // Only the shape counts: `/pets/{id}` and `/pets/{petId}` are one template (and
        // matchit would refuse two names at one position).
        let canonical = canonical(path);
        let entry_idx = match self.paths.get(&canonical) {
            Some(&i) => i,
            None => {
                let i = self.entries.len();
                self.all
                    .insert(&canonical, i)
                    .map_err(|e| RouterError::BadTemplate {
                        path: path.to_string(),
                        reason: e.to_string(),
                    })?;
                self.entries.push(PathEntry {
                    rank: rank_of(path),
                    ..PathEntry::default()
                });
                self.paths.insert(canonical, i);
                i
            }
        };
        let entry = &mut self.entries[entry_idx];
        if methods.is_empty() {
            if let Some(other) = entry.any_method {
                return Err(RouterError::Duplicate {
                    method: "(every method)".into(),
                    path: path.into(),
                    other,
                });
            }
            entry.any_method = Some(route);
        }
        for m in methods {
            if let Some((_, other)) = entry.by_method.iter().find(|(em, _)| em == m) {
                return Err(RouterError::Duplicate {
                    method: m.to_string(),
                    path: path.into(),
                    other: *other,
                });
            }
            entry.by_method.push((m.clone(), route));
        }
        Ok(())
    }

    /// Some route on the most specific template matching `path`, whatever its method: which
    /// API a path belongs to (for CORS), when the method has no route there.
    pub fn owner(&self, path: &str) -> Option<usize> {
        let entry = self.all.best(path, &self.entries)?;
        entry
            .by_method
            .first()
            .map(|(_, r)| *r)
            .or(entry.any_method)
    }

    /// The methods the routes of `path` allow (the 405 `Allow` list, also for CORS), and
    /// whether one of them takes every method.
    pub fn allowed(&self, path: &str) -> Option<(Vec<&str>, bool)> {
        self.all.best(path, &self.entries)?;
        let mut methods: Vec<&str> = Vec::new();
        let mut any = false;
        let matching = self
            .by_method
            .iter()
            .filter_map(|(method, trees)| trees.best(path, &self.entries).map(|_| method));
        for method in self.universal.iter().chain(matching) {
            match method {
                Some(m) => methods.push(m.as_str()),
                None => any = true,
            }
        }
        methods.sort_unstable();
        Some((methods, any))
    }

    /// `path` must already be normalized (see `path::normalize`).
    pub fn lookup(&self, method: &Method, path: &str) -> Lookup<'_> {
        let Some(first) = self.all.best(path, &self.entries) else {
            return Lookup::NotFound;
        };
        if let Some(route) = first.route_for(method) {
            return Lookup::Found(route);
        }
        // The most specific template that has a route for the method, or for every method.
        let fallback = self
            .by_method
            .iter()
            .filter(|(m, _)| m.as_ref().is_none_or(|m| m == method))
            .filter_map(|(_, trees)| trees.best(path, &self.entries))
            .min_by(|a, b| a.rank.cmp(&b.rank));
        if let Some(route) = fallback.and_then(|e| e.route_for(method)) {
            return Lookup::Found(route);
        }
        // A 405 names the methods of every route of the path (SPEC step 6).
        let (allow, _) = self.allowed(path).unwrap_or_default();
        Lookup::MethodNotAllowed(Cow::Owned(allow.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(&[&str], &str)]) -> Router {
        let mut r = Router::default();
        for (i, (methods, path)) in routes.iter().enumerate() {
            let ms: Vec<Method> = methods.iter().map(|m| m.parse().unwrap()).collect();
            r.insert(path, &ms, i).unwrap();
        }
        r.finish().unwrap();
        r
    }

    #[test]
    fn most_specific_template_wins() {
        let r = router(&[
            (&["GET"], "/files/{*rest}"),
            (&["GET"], "/files/{name}"),
            (&["GET"], "/files/readme"),
        ]);
        assert_eq!(r.lookup(&Method::GET, "/files/readme"), Lookup::Found(2));
        assert_eq!(r.lookup(&Method::GET, "/files/other"), Lookup::Found(1));
        assert_eq!(r.lookup(&Method::GET, "/files/a/b"), Lookup::Found(0));
    }

    #[test]
    fn a_less_specific_template_of_the_same_kind_takes_methods_the_specific_one_lacks() {
        // SPEC step 6: a 405 only when no route of the path takes the method.
        let r = router(&[
            (&["GET"], "/files/readme"),
            (&["DELETE"], "/files/{name}"),
            (&["GET"], "/files/{*rest}"),
            (&[], "/{*all}"),
            (&["PUT"], "/{x}/{y}"),
        ]);
        assert_eq!(r.lookup(&Method::GET, "/files/readme"), Lookup::Found(0));
        assert_eq!(r.lookup(&Method::DELETE, "/files/readme"), Lookup::Found(1));
        assert_eq!(r.lookup(&Method::PUT, "/files/readme"), Lookup::Found(4));
        assert_eq!(r.lookup(&Method::POST, "/files/readme"), Lookup::Found(3));
        assert_eq!(r.lookup(&Method::POST, "/files/a/b"), Lookup::Found(3));
        assert_eq!(r.lookup(&Method::GET, "/files/a/b"), Lookup::Found(2));
        let r = router(&[
            (&["GET"], "/a/{x}"),
            (&["POST"], "/{y}/{z}"),
            (&["PUT"], "/{y}/{*z}"),
        ]);
        assert_eq!(r.lookup(&Method::POST, "/a/b"), Lookup::Found(1));
        assert_eq!(
            r.lookup(&Method::DELETE, "/a/b"),
            Lookup::MethodNotAllowed("GET, POST, PUT".into())
        );
        assert_eq!(r.allowed("/a/b"), Some((vec!["GET", "POST", "PUT"], false)));
        assert_eq!(
            r.lookup(&Method::DELETE, "/a/b/c"),
            Lookup::MethodNotAllowed("PUT".into())
        );
        assert_eq!(r.lookup(&Method::GET, "/"), Lookup::NotFound);
        // A method every template has keeps no trees of its own, and is still in every Allow.
        let r = router(&[(&["GET"], "/a/{x}"), (&["GET", "POST"], "/{y}/{z}")]);
        assert_eq!(r.by_method.len(), 1, "{:?}", r.universal);
        assert_eq!(r.lookup(&Method::POST, "/a/b"), Lookup::Found(1));
        assert_eq!(
            r.lookup(&Method::PUT, "/a/b"),
            Lookup::MethodNotAllowed("GET, POST".into())
        );
        assert_eq!(
            r.lookup(&Method::PUT, "/b/b"),
            Lookup::MethodNotAllowed("GET, POST".into())
        );
    }

    #[test]
    fn a_literal_segment_before_a_tail_beats_a_parameter() {
        let r = router(&[(&["GET"], "/{x}/readme"), (&["GET"], "/files/{*rest}")]);
        assert_eq!(r.lookup(&Method::GET, "/files/readme"), Lookup::Found(1));
        assert_eq!(r.lookup(&Method::GET, "/other/readme"), Lookup::Found(0));
    }

    #[test]
    fn a_less_specific_route_takes_methods_the_specific_one_lacks() {
        let r = router(&[(&["GET"], "/files/{name}"), (&["DELETE"], "/files/{*rest}")]);
        assert_eq!(r.lookup(&Method::DELETE, "/files/a"), Lookup::Found(1));
        assert_eq!(r.lookup(&Method::GET, "/files/a"), Lookup::Found(0));
        assert_eq!(
            r.lookup(&Method::PUT, "/files/a"),
            Lookup::MethodNotAllowed("DELETE, GET".into())
        );
    }

    #[test]
    fn method_not_allowed_lists_allowed_methods() {
        let r = router(&[(&["GET", "HEAD"], "/c"), (&["DELETE"], "/c")]);
        assert_eq!(
            r.lookup(&Method::POST, "/c"),
            Lookup::MethodNotAllowed("DELETE, GET, HEAD".into())
        );
        assert_eq!(r.lookup(&Method::DELETE, "/c"), Lookup::Found(1));
        assert_eq!(r.lookup(&Method::GET, "/nope"), Lookup::NotFound);
    }

    #[test]
    fn a_route_without_methods_takes_every_method() {
        let r = router(&[(&[], "/any"), (&["GET"], "/any")]);
        assert_eq!(r.lookup(&Method::GET, "/any"), Lookup::Found(1));
        assert_eq!(r.lookup(&Method::PATCH, "/any"), Lookup::Found(0));
    }

    #[test]
    fn duplicates_and_bad_templates_are_errors() {
        let mut r = Router::default();
        r.insert("/a", &[Method::GET], 0).unwrap();
        assert!(matches!(
            r.insert("/a", &[Method::GET], 1),
            Err(RouterError::Duplicate { .. })
        ));
        for bad in [
            "a",
            "/a/{x",
            "/a/x{y}",
            "/{*rest}/b",
            "/a/../b",
            "/a//b",
            "/{}",
            // A brace beside a character of more than one byte: an error, not a panic.
            "/é}",
            "/{é",
            "/{x}é}",
        ] {
            assert!(Router::default().insert(bad, &[], 0).is_err(), "{bad}");
        }
        let mut r = Router::default();
        r.insert("/a/{x}", &[], 0).unwrap();
        r.insert("/a/{*rest}", &[], 1).unwrap();
        assert!(
            matches!(
                r.insert("/a/{y}", &[], 2),
                Err(RouterError::Duplicate { other: 0, .. })
            ),
            "only the shape counts"
        );
        // Different names at one position are fine for different templates.
        r.insert("/b/{x}/c", &[Method::GET], 3).unwrap();
        r.insert("/b/{y}/d", &[Method::GET], 4).unwrap();
        assert_eq!(r.lookup(&Method::GET, "/b/1/d"), Lookup::Found(4));
    }
}
