//! Media types and media ranges (`allowed_content_types`, OpenAPI `content` keys).
//!
//! ```text
//! MediaRange::parse("application/*+json")?.matches(&MediaType::parse("application/vnd.api+json; charset=utf-8")?)
//! ```
//! Parameters (`; charset=utf-8`) are ignored on both sides; case is not significant (RFC 9110 §8.3.1).

use std::fmt;

/// A request's media type without its parameters, lowercase: `application/json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType {
    kind: String,
    subtype: String,
}

impl MediaType {
    /// The media type of a `content-type` value; `None` when it is not `type/subtype` (a range
    /// such as `*/*` is not a media type either).
    pub fn parse(value: &str) -> Option<Self> {
        let (kind, subtype) = essence(value)?;
        (kind != "*" && subtype != "*").then_some(Self { kind, subtype })
    }

    /// Whether it is JSON: `application/json` or a `+json` structured suffix.
    pub fn is_json(&self) -> bool {
        self.kind == "application" && (self.subtype == "json" || self.subtype.ends_with("+json"))
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.subtype)
    }
}

/// A media range: `type/subtype`, `type/*`, `*/*`, or `type/*+suffix` (any subtype with that
/// structured suffix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRange {
    kind: String,
    subtype: String,
}

impl MediaRange {
    /// Parses a range; `None` when it is none of the four forms.
    pub fn parse(value: &str) -> Option<Self> {
        let (kind, subtype) = essence(value)?;
        let ok = match (kind.as_str(), subtype.as_str()) {
            ("*", s) => s == "*",
            (_, s) => s == "*" || !s.contains('*') || s.strip_prefix("*+").is_some_and(|suffix| !suffix.contains('*')),
        };
        ok.then_some(Self { kind, subtype })
    }

    /// Whether `media` is in the range.
    pub fn matches(&self, media: &MediaType) -> bool {
        if self.kind == "*" {
            return true;
        }
        if self.kind != media.kind {
            return false;
        }
        match self.subtype.strip_prefix('*') {
            Some("") => true,
            Some(suffix) => media.subtype.ends_with(suffix) && media.subtype.len() > suffix.len(),
            None => self.subtype == media.subtype,
        }
    }

    /// How specific the range is (higher wins among several that match): exact 3,
    /// `type/*+suffix` 2, `type/*` 1, `*/*` 0.
    pub fn specificity(&self) -> u8 {
        match (self.kind.as_str(), self.subtype.as_str()) {
            ("*", _) => 0,
            (_, "*") => 1,
            (_, s) if s.starts_with('*') => 2,
            _ => 3,
        }
    }
}

impl fmt::Display for MediaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.subtype)
    }
}

/// `type` and `subtype` of a value without its parameters, lowercase, each a token (RFC 9110 §5.6.2,
/// with `*` allowed for ranges).
fn essence(value: &str) -> Option<(String, String)> {
    let bare = value.split(';').next().unwrap_or("").trim();
    let (kind, subtype) = bare.split_once('/')?;
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    (token(kind) && token(subtype)).then(|| (kind.to_ascii_lowercase(), subtype.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(range: &str, media: &str) -> bool {
        MediaRange::parse(range).unwrap().matches(&MediaType::parse(media).unwrap())
    }

    #[test]
    fn ranges_match_by_type_subtype_and_suffix() {
        assert!(m("application/json", "Application/JSON; charset=utf-8"));
        assert!(!m("application/json", "application/jsonx"));
        assert!(m("application/*", "application/xml"));
        assert!(!m("application/*", "text/plain"));
        assert!(m("*/*", "text/plain"));
        assert!(m("application/*+json", "application/vnd.api+json"));
        assert!(!m("application/*+json", "application/json"));
        assert!(!m("application/*+json", "application/+json"));
        assert!(!m("application/*+json", "text/vnd.x+json"));
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in ["json", "application/", "/json", "*/json", "application/js*on", "a b/c", "application/*+*", ""] {
            assert_eq!(MediaRange::parse(bad), None, "{bad}");
        }
        assert_eq!(MediaType::parse("*/*"), None);
        assert_eq!(MediaType::parse("application/*"), None);
        assert_eq!(MediaRange::parse("Text/Plain; q=1").unwrap().to_string(), "text/plain");
    }
}
