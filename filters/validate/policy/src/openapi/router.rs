//! The path-template router of an OpenAPI document, on `matchit` (a radix tree: a lookup costs
//! the path's length, not the number of paths).
//!
//! ```text
//! PathRouter::insert("/pets/{petId}", 0)   → matchit route "/pets/{p0}", names ["petId"]
//! PathRouter::at("/pets/a%2Fb")            → Some((0, [("petId", "a/b")]))
//! ```
//!
//! - **Concrete paths win over templates** (OpenAPI: "when matching URLs, concrete (non-templated)
//!   paths would be matched before their templated counterparts"): `/pets/mine` beats
//!   `/pets/{id}`; matchit gives static segments priority.
//! - A template expression takes one whole segment or part of one, with a literal prefix and
//!   suffix (`/files/{name}.json`, `/v{major}/x`); one expression per segment (matchit's limit:
//!   `/{a}-{b}` is a configuration error).
//! - Templates that differ only in their parameter names (`/pets/{id}` and `/pets/{petId}`) are
//!   the same path (OpenAPI says they "are considered identical and invalid"): a configuration
//!   error. Parameters are inserted under positional names (`p0`, `p1`, …), so matchit sees the
//!   two as one route and refuses the second.
//! - Paths are compared in one canonical percent-encoding ([`canonical`]): `%xx` of an
//!   unreserved character is decoded (`/p%65ts` is `/pets`), other escapes are upper-cased, and a
//!   byte a path may not hold raw is escaped. Template literals get the same treatment, so
//!   `/café` in the document matches `/caf%C3%A9` on the wire. `%2F` stays encoded: an encoded
//!   slash never splits a segment. Parameter values are percent-decoded once, after matching
//!   (invalid UTF-8 becomes U+FFFD).
//! - A trailing slash is significant (`/pets/` is not `/pets`), as are empty segments.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use gatewarden_policy::error::{quote, ConfigError, FieldPath};

/// Template routes and what each leads to (an index into the document's path items).
#[derive(Debug, Clone, Default)]
pub(crate) struct PathRouter {
    router: matchit::Router<usize>,
    /// Per inserted value: its template's parameter names, in order.
    names: Vec<Vec<String>>,
    /// Per inserted value: its template as written (for conflict messages).
    templates: Vec<String>,
}

impl PathRouter {
    /// Adds `template` (a `paths` key, found at `path`) leading to `value`, which must be the
    /// number of templates inserted before (values are dense indexes).
    pub(crate) fn insert(&mut self, template: &str, value: usize, path: &FieldPath) -> Result<(), ConfigError> {
        let (route, names) = route_of(template, path)?;
        if let Err(e) = self.router.insert(route, value) {
            let message = match e {
                matchit::InsertError::Conflict { with } => {
                    let other = self.route_template(&with).unwrap_or(with);
                    format!(
                        "template {} is the same path as {}: templates that differ only in parameter names are identical (OpenAPI)",
                        quote(template),
                        quote(&other)
                    )
                }
                other => format!("template {} cannot be routed: {other}", quote(template)),
            };
            return Err(path.error(message));
        }
        self.names.push(names);
        self.templates.push(template.to_owned());
        Ok(())
    }

    /// The template whose matchit route is `route`.
    fn route_template(&self, route: &str) -> Option<String> {
        let found = self.router.at(route).ok()?;
        self.templates.get(*found.value).cloned()
    }

    /// The value of the template matching `path` (canonical, see [`canonical`]) and its
    /// parameters, percent-decoded.
    pub(crate) fn at(&self, path: &str) -> Option<(usize, Vec<(String, String)>)> {
        let found = self.router.at(path).ok()?;
        let value = *found.value;
        let names = self.names.get(value)?;
        let params = found
            .params
            .iter()
            .filter_map(|(key, raw)| {
                let i: usize = key.strip_prefix('p')?.parse().ok()?;
                let name = names.get(i)?;
                Some((name.clone(), percent_decode_str(raw).decode_utf8_lossy().into_owned()))
            })
            .collect();
        Some((value, params))
    }
}

/// The matchit route of an OpenAPI template (expressions renamed `p0`, `p1`, …, literals in
/// canonical form) and the template's parameter names.
fn route_of(template: &str, path: &FieldPath) -> Result<(String, Vec<String>), ConfigError> {
    if !template.starts_with('/') {
        return Err(path.error(format!("a path must start with \"/\", got {}", quote(template))));
    }
    let mut route = String::with_capacity(template.len() + 8);
    let mut names = Vec::new();
    for segment in template.split('/').skip(1) {
        route.push('/');
        let mut rest = segment;
        let mut in_segment = 0;
        while let Some(open) = rest.find(['{', '}']) {
            let (literal, tail) = rest.split_at(open);
            route.push_str(&canonical(literal));
            let Some(after) = tail.strip_prefix('{') else {
                return Err(path.error(format!("unbalanced \"}}\" in template {}", quote(template))));
            };
            let Some(close) = after.find('}') else {
                return Err(path.error(format!("unclosed \"{{\" in template {}", quote(template))));
            };
            let (name, after_close) = after.split_at(close);
            if name.is_empty() || name.contains('{') {
                return Err(path.error(format!("invalid template expression in {}", quote(template))));
            }
            in_segment += 1;
            if in_segment > 1 {
                return Err(path.error(format!("template {}: at most one {{expression}} per path segment is supported", quote(template))));
            }
            if names.iter().any(|n| n == name) {
                return Err(path.error(format!("template {} names parameter {} twice", quote(template), quote(name))));
            }
            route.push_str(&format!("{{p{}}}", names.len()));
            names.push(name.to_owned());
            rest = after_close.get(1..).unwrap_or("");
        }
        route.push_str(&canonical(rest));
    }
    Ok((route, names))
}

/// `path` in canonical percent-encoding: `%xx` of an unreserved character (`A-Z a-z 0-9 - . _ ~`)
/// decoded, other `%xx` upper-cased, a `%` not followed by two hex digits escaped as `%25`, and
/// every byte outside RFC 3986's `pchar` and `/` escaped. Borrowed when nothing changes.
pub(crate) fn canonical(path: &str) -> Cow<'_, str> {
    let bytes = path.as_bytes();
    let clean = bytes.iter().all(|&b| b != b'%' && is_pchar(b));
    if clean {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len() + 8);
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = (bytes.get(i + 1).copied().and_then(hex_value), bytes.get(i + 2).copied().and_then(hex_value));
            if let (Some(hi), Some(lo)) = hex {
                let decoded = hi * 16 + lo;
                if is_unreserved(decoded) {
                    out.push(char::from(decoded));
                } else {
                    push_escaped(&mut out, decoded);
                }
                i += 3;
                continue;
            }
            out.push_str("%25");
        } else if is_pchar(b) {
            out.push(char::from(b));
        } else {
            push_escaped(&mut out, b);
        }
        i += 1;
    }
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0')));
    out.push(char::from(HEX.get(usize::from(b & 15)).copied().unwrap_or(b'0')));
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// RFC 3986 `pchar` (without `%`, handled apart) or `/`.
fn is_pchar(b: u8) -> bool {
    is_unreserved(b) || b"!$&'()*+,;=:@/".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_decodes_unreserved_and_escapes_the_rest() {
        assert_eq!(canonical("/pets/1"), "/pets/1");
        assert_eq!(canonical("/p%65ts/%2f/%zz"), "/pets/%2F/%25zz");
        assert_eq!(canonical("/café x"), "/caf%C3%A9%20x");
        assert_eq!(canonical("/a%"), "/a%25");
    }

    #[test]
    fn templates_become_positional_routes() {
        let (route, names) = route_of("/pets/{petId}/files/{name}.json", &FieldPath::root()).unwrap();
        assert_eq!(route, "/pets/{p0}/files/{p1}.json");
        assert_eq!(names, ["petId", "name"]);
    }
}
