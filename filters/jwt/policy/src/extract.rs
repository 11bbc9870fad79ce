//! Finding a provider's token in the request: headers (with an optional prefix), query
//! parameters of `:path`, cookies.
//!
//! ```text
//! match sources.extract(&facts) {
//!     Extracted::None => missing,
//!     Extracted::Multiple => refused (multiple_tokens),
//!     Extracted::Some(candidates) => keep those whose `iss` is the provider's; one ⇒ verify it
//!         and strip its `locations` unless forwarded; several ⇒ multiple_tokens,
//! }
//! ```
//! All sources are searched. The same token found in several places (say, two `Authorization`
//! headers) is one token. Different tokens are told apart by their (unverified) `iss`: a token
//! of another issuer is not this provider's (two providers may share `Authorization`); two
//! different tokens of the provider's own issuer are refused, because RFC 6750 §2 lets a client
//! use one method only and picking one would let a second token hide. At most
//! [`MAX_CANDIDATES`] different tokens are considered; more are refused as `multiple_tokens`.
//! Values are not percent-decoded: a JWT needs no escaping, and an escaped one is malformed.

use gatewarden_policy::facts::RequestFacts;
use smallvec::{smallvec, SmallVec};

/// Where a provider looks for its token.
#[derive(Debug, Clone)]
pub(crate) struct Sources {
    /// Lowercase header name and optional prefix.
    pub headers: Vec<(String, Option<String>)>,
    pub params: Vec<String>,
    pub cookies: Vec<String>,
}

/// Where a token was found, so it can be removed before the request goes upstream: the index
/// of the name in the provider's [`Sources`] list of that kind ([`Sources::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Location {
    Header(usize),
    Param(usize),
    Cookie(usize),
}

/// Everywhere one token was found (nearly always one place), inline.
pub(crate) type Locations = SmallVec<[Location; 2]>;

/// Most different tokens looked at for one provider in one request.
pub const MAX_CANDIDATES: usize = 4;

/// One token found, and everywhere it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate<'a> {
    pub token: &'a str,
    pub locations: Locations,
}

/// The different tokens found (nearly always one), inline.
pub(crate) type Candidates<'a> = SmallVec<[Candidate<'a>; 2]>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Extracted<'a> {
    None,
    /// One to [`MAX_CANDIDATES`] different tokens, in source order.
    Some(Candidates<'a>),
    /// More than [`MAX_CANDIDATES`] different tokens.
    Multiple,
}

impl<'a> Extracted<'a> {
    fn add(&mut self, token: &'a str, at: Location) {
        match self {
            Extracted::None => *self = Extracted::Some(smallvec![Candidate { token, locations: smallvec![at] }]),
            Extracted::Some(list) => {
                if let Some(c) = list.iter_mut().find(|c| c.token == token) {
                    if !c.locations.contains(&at) {
                        c.locations.push(at);
                    }
                } else if list.len() < MAX_CANDIDATES {
                    list.push(Candidate { token, locations: smallvec![at] });
                } else {
                    *self = Extracted::Multiple;
                }
            }
            Extracted::Multiple => {}
        }
    }
}

impl Sources {
    /// The header, query parameter or cookie name of a location.
    pub fn name(&self, at: Location) -> Option<&str> {
        match at {
            Location::Header(i) => self.headers.get(i).map(|(name, _)| name.as_str()),
            Location::Param(i) => self.params.get(i).map(String::as_str),
            Location::Cookie(i) => self.cookies.get(i).map(String::as_str),
        }
    }

    pub fn extract<'a>(&self, facts: &RequestFacts<'a>) -> Extracted<'a> {
        let mut found = Extracted::None;
        for (at, (name, prefix)) in self.headers.iter().enumerate() {
            for (k, v) in facts.pairs() {
                if !k.eq_ignore_ascii_case(name) {
                    continue;
                }
                let token = match prefix {
                    None => Some(v),
                    Some(p) => strip_prefix_ignore_case(v, p),
                };
                if let Some(t) = token.map(str::trim).filter(|t| !t.is_empty()) {
                    found.add(t, Location::Header(at));
                }
            }
            if found == Extracted::Multiple {
                return found;
            }
        }
        if !self.params.is_empty() {
            let full = facts.header(":path").unwrap_or("");
            for (name, value) in query_pairs(full) {
                if let Some(at) = self.params.iter().position(|p| p == name).filter(|_| !value.is_empty()) {
                    found.add(value, Location::Param(at));
                }
            }
        }
        if !self.cookies.is_empty() {
            for header in facts.header_values("cookie") {
                for (name, value) in cookie_pairs(header) {
                    if let Some(at) = self.cookies.iter().position(|c| c == name).filter(|_| !value.is_empty()) {
                        found.add(value, Location::Cookie(at));
                    }
                }
            }
        }
        found
    }
}

fn strip_prefix_ignore_case<'a>(v: &'a str, prefix: &str) -> Option<&'a str> {
    let head = v.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        v.get(prefix.len()..)
    } else {
        None
    }
}

/// `name=value` pairs of the query string of a `:path` (up to `#`).
pub(crate) fn query_pairs(path: &str) -> impl Iterator<Item = (&str, &str)> {
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, "")))
}

fn cookie_pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(';').filter_map(|c| {
        let (n, v) = c.split_once('=')?;
        let v = v.trim();
        // RFC 6265 allows a quoted cookie value.
        let v = v.strip_prefix('"').and_then(|x| x.strip_suffix('"')).unwrap_or(v);
        Some((n.trim(), v))
    })
}

/// `path` without the query parameters named in `names` (the rest keeps its order).
pub(crate) fn path_without_params(path: &str, names: &[String]) -> String {
    let (before_fragment, fragment) = match path.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (path, None),
    };
    let (base, query) = before_fragment.split_once('?').unwrap_or((before_fragment, ""));
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split_once('=').map_or(*p, |(n, _)| n);
            !names.iter().any(|x| x == name)
        })
        .collect();
    let mut out = base.to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// All `cookie` headers merged into one value without the cookies named in `names`; `None`
/// when nothing is left.
pub(crate) fn cookies_without(facts: &RequestFacts<'_>, names: &[String]) -> Option<String> {
    let mut kept = Vec::new();
    for header in facts.header_values("cookie") {
        for c in header.split(';') {
            let c = c.trim();
            if c.is_empty() {
                continue;
            }
            let name = c.split_once('=').map_or(c, |(n, _)| n.trim());
            if !names.iter().any(|x| x == name) {
                kept.push(c);
            }
        }
    }
    if kept.is_empty() {
        None
    } else {
        Some(kept.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn sources() -> Sources {
        Sources {
            headers: vec![("authorization".into(), Some("Bearer ".into())), ("x-jwt".into(), None)],
            params: vec!["access_token".into()],
            cookies: vec!["session".into()],
        }
    }

    #[test]
    fn table_of_sources() {
        let s = sources();
        let one = |t: &'static str, at: Location| Extracted::Some(smallvec![Candidate { token: t, locations: smallvec![at] }]);
        let two = |a: (&'static str, Location), b: (&'static str, Location)| {
            Extracted::Some(smallvec![
                Candidate { token: a.0, locations: smallvec![a.1] },
                Candidate { token: b.0, locations: smallvec![b.1] }
            ])
        };
        let cases: Vec<(Vec<(&str, &str)>, Extracted<'static>)> = vec![
            (vec![(":path", "/")], Extracted::None),
            (vec![(":path", "/"), ("authorization", "Bearer a.b.c")], one("a.b.c", Location::Header(0))),
            (vec![(":path", "/"), ("authorization", "bearer  a.b.c ")], one("a.b.c", Location::Header(0))),
            (vec![(":path", "/"), ("authorization", "Basic dXNlcg==")], Extracted::None),
            (vec![(":path", "/"), ("authorization", "Bearer ")], Extracted::None),
            (vec![(":path", "/"), ("x-jwt", "a.b.c")], one("a.b.c", Location::Header(1))),
            (vec![(":path", "/x?a=1&access_token=a.b.c#f")], one("a.b.c", Location::Param(0))),
            (vec![(":path", "/x?access_token=")], Extracted::None),
            (vec![(":path", "/x?my_access_token=a.b.c")], Extracted::None),
            (vec![(":path", "/"), ("cookie", "a=1; session=a.b.c")], one("a.b.c", Location::Cookie(0))),
            (vec![(":path", "/"), ("cookie", "session=\"a.b.c\"")], one("a.b.c", Location::Cookie(0))),
            (
                vec![(":path", "/?access_token=a.b.c"), ("authorization", "Bearer a.b.c")],
                Extracted::Some(smallvec![Candidate { token: "a.b.c", locations: smallvec![Location::Header(0), Location::Param(0)] }]),
            ),
            (vec![(":path", "/"), ("authorization", "Bearer a.b.c"), ("authorization", "Bearer a.b.c")], one("a.b.c", Location::Header(0))),
            (
                vec![(":path", "/"), ("authorization", "Bearer a.b.c"), ("authorization", "Bearer d.e.f")],
                two(("a.b.c", Location::Header(0)), ("d.e.f", Location::Header(0))),
            ),
            (
                vec![(":path", "/?access_token=d.e.f"), ("authorization", "Bearer a.b.c")],
                two(("a.b.c", Location::Header(0)), ("d.e.f", Location::Param(0))),
            ),
            (
                vec![(":path", "/"), ("cookie", "session=a.b.c"), ("x-jwt", "d.e.f")],
                two(("d.e.f", Location::Header(1)), ("a.b.c", Location::Cookie(0))),
            ),
            (
                vec![
                    (":path", "/?access_token=5"),
                    ("authorization", "Bearer 1"),
                    ("authorization", "Bearer 2"),
                    ("x-jwt", "3"),
                    ("cookie", "session=4"),
                ],
                Extracted::Multiple,
            ),
        ];
        for (req, want) in cases {
            let headers = h(&req);
            // Compared as text: `SmallVec` is invariant, so `want` cannot take the facts' lifetime.
            assert_eq!(format!("{:?}", s.extract(&RequestFacts::new(&headers, None))), format!("{want:?}"), "{req:?}");
        }
    }

    #[test]
    fn locations_name_their_source() {
        let s = sources();
        assert_eq!(s.name(Location::Header(0)), Some("authorization"));
        assert_eq!(s.name(Location::Header(1)), Some("x-jwt"));
        assert_eq!(s.name(Location::Param(0)), Some("access_token"));
        assert_eq!(s.name(Location::Cookie(0)), Some("session"));
        assert_eq!(s.name(Location::Cookie(1)), None);
    }

    #[test]
    fn stripping_keeps_everything_else() {
        let names = vec!["access_token".to_string()];
        assert_eq!(path_without_params("/a?x=1&access_token=t&y=2#f", &names), "/a?x=1&y=2#f");
        assert_eq!(path_without_params("/a?access_token=t", &names), "/a");
        assert_eq!(path_without_params("/a", &names), "/a");
        let headers = h(&[("cookie", "a=1; session=t"), ("cookie", "b=2")]);
        let facts = RequestFacts::new(&headers, None);
        assert_eq!(cookies_without(&facts, &["session".into()]).as_deref(), Some("a=1; b=2"));
        let headers = h(&[("cookie", "session=t")]);
        assert_eq!(cookies_without(&RequestFacts::new(&headers, None), &["session".into()]), None);
    }
}
