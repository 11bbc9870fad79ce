//! The request facts a policy decides from, read once from the host per request.

use std::cell::OnceCell;

/// The request headers a compiled policy reads, so the glue fetches only those across the Wasm
/// boundary (each crossing costs more than most policy logic). Lowercase, sorted, unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderNeeds {
    names: Vec<String>,
}

impl HeaderNeeds {
    /// Adds a header name (any case).
    pub fn add(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        if let Err(at) = self.names.binary_search(&name) {
            self.names.insert(at, name);
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// What a policy may know about a request. Header names are lowercase (as HTTP/2 and both hosts
/// deliver them); pseudo-headers (`:path`, `:method`, `:authority`) are read from the same list.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// All request headers, in the order the host gave them.
    pub headers: &'a [(String, String)],
    /// The peer address as the host reports it: `ip:port` (Envoy), `ip` (Kong), `[v6]:port`.
    pub peer: Option<&'a str>,
    /// Where the peer address comes from when `peer` was not read up front: the glue reads it
    /// from the host only for the requests whose decision needs it (the JWT filter: denials).
    pub peer_source: Option<PeerSource<'a>>,
    /// How many headers the request has, when `headers` holds only the ones a policy reads
    /// ([`HeaderNeeds`]); None: `headers` is all of them.
    pub header_count: Option<usize>,
    /// Request headers borrowed from the host (the native module reads them in place, valid
    /// while the request's headers are unchanged), read by every accessor after `headers`.
    /// A policy that needs owned strings (`headers` directly) is given owned ones instead.
    pub borrowed: &'a [(&'a str, &'a str)],
}

/// Reads the peer address on demand (one host call in the glue), once: the first read fills
/// `cell`, and every caller borrows from it.
#[derive(Clone, Copy)]
pub struct PeerSource<'a> {
    pub cell: &'a OnceCell<Option<String>>,
    pub read: &'a dyn Fn() -> Option<String>,
}

impl std::fmt::Debug for PeerSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerSource")
    }
}

impl<'a> RequestFacts<'a> {
    pub fn new(headers: &'a [(String, String)], peer: Option<&'a str>) -> Self {
        Self { headers, peer, peer_source: None, header_count: None, borrowed: &[] }
    }

    /// The same facts with `borrowed` header pairs (see [`Self::borrowed`]).
    pub fn with_borrowed_headers(self, borrowed: &'a [(&'a str, &'a str)]) -> Self {
        Self { borrowed, ..self }
    }

    /// Every header pair, owned ones then borrowed ones.
    pub fn pairs(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(self.borrowed.iter().copied())
    }

    /// The same facts for a request of `count` headers, of which `headers` holds the ones the
    /// policy reads (a host that reads headers one by one knows the count without copying all).
    pub fn with_header_count(self, count: usize) -> Self {
        Self { header_count: Some(count), ..self }
    }

    /// How many headers the request has (pseudo-headers included).
    pub fn header_count(&self) -> usize {
        self.header_count.unwrap_or(self.headers.len() + self.borrowed.len())
    }

    /// Facts whose peer address is read by `read` into `cell` when a decision first asks for it.
    pub fn with_peer_source(
        headers: &'a [(String, String)],
        cell: &'a OnceCell<Option<String>>,
        read: &'a dyn Fn() -> Option<String>,
    ) -> Self {
        Self { headers, peer: None, peer_source: Some(PeerSource { cell, read }), header_count: None, borrowed: &[] }
    }

    /// The peer address: the one given, else read (once) from the peer source.
    pub fn peer_address(&self) -> Option<&'a str> {
        match (self.peer, self.peer_source) {
            (Some(p), _) => Some(p),
            (None, Some(PeerSource { cell, read })) => cell.get_or_init(read).as_deref(),
            (None, None) => None,
        }
    }

    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.pairs().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// Every value of header `name`, in order.
    pub fn header_values(&self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    pub fn method(&self) -> &'a str {
        self.header(":method").unwrap_or("")
    }

    /// The path without query string or fragment.
    pub fn path(&self) -> &'a str {
        let full = self.header(":path").unwrap_or("");
        let end = full.find(['?', '#']).unwrap_or(full.len());
        full.get(..end).unwrap_or(full)
    }

    /// The host without port, as sent (`:authority`, else `host`).
    pub fn host(&self) -> &'a str {
        let authority = self.header(":authority").or_else(|| self.header("host")).unwrap_or("");
        strip_port(authority)
    }

    /// The request id (`x-request-id`), for logs.
    pub fn request_id(&self) -> &'a str {
        self.header("x-request-id").unwrap_or("")
    }
}

fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn borrowed_headers_read_as_owned_ones() {
        let owned = h(&[(":path", "/a?x=1"), ("cookie", "a=1"), ("cookie", "b=2"), ("x-forwarded-for", "1.2.3.4")]);
        let lent: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let a = RequestFacts::new(&owned, None);
        let b = RequestFacts::new(&[], None).with_borrowed_headers(&lent);
        for facts in [a, b] {
            assert_eq!(facts.path(), "/a");
            assert_eq!(facts.header("X-Forwarded-For"), Some("1.2.3.4"));
            assert_eq!(facts.header_values("cookie").collect::<Vec<_>>(), ["a=1", "b=2"]);
            assert_eq!(facts.header_count(), 4);
            assert_eq!(facts.pairs().count(), 4);
        }
        assert_eq!(RequestFacts::new(&[], None).with_borrowed_headers(&lent).with_header_count(9).header_count(), 9);
    }

    #[test]
    fn path_drops_query_and_fragment() {
        let headers = h(&[(":path", "/a/b?x=1#f")]);
        assert_eq!(RequestFacts::new(&headers, None).path(), "/a/b");
    }

    #[test]
    fn host_drops_port_for_names_and_v6() {
        for (authority, host) in
            [("api.example.com:8443", "api.example.com"), ("[2001:db8::1]:443", "2001:db8::1"), ("example.com", "example.com")]
        {
            let headers = h(&[(":authority", authority)]);
            assert_eq!(RequestFacts::new(&headers, None).host(), host, "authority {authority}");
        }
    }
}
