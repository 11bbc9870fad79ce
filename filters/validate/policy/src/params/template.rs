//! Path templates of the plain form: `/pets/{id}`, `/files/{name}.json`.

use percent_encoding::percent_decode_str;

use gatewarden_policy::error::{quote, ConfigError, FieldPath};

/// A path template (`/pets/{id}`, `/files/{name}.json`): literal segments and segments holding
/// one `{name}` with an optional literal prefix and suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param { prefix: String, name: String, suffix: String },
}

impl PathTemplate {
    /// Compiles `template` (found at `path`).
    pub fn compile(template: &str, path: &FieldPath) -> Result<Self, ConfigError> {
        let bad = |why: &str| path.error(format!("invalid path template {}: {why}", quote(template)));
        let Some(rest) = template.strip_prefix('/') else {
            return Err(bad("it must start with \"/\""));
        };
        if template.contains(['?', '#']) || template.chars().any(char::is_whitespace) {
            return Err(bad("it holds no query, fragment or whitespace"));
        }
        let mut segments = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for seg in rest.split('/') {
            let Some((prefix, after)) = seg.split_once('{') else {
                if seg.contains('}') {
                    return Err(bad("unbalanced \"}\""));
                }
                segments.push(Segment::Literal(seg.to_owned()));
                continue;
            };
            let (name, suffix) = after.split_once('}').ok_or_else(|| bad("unclosed \"{\""))?;
            if suffix.contains(['{', '}']) || prefix.contains('}') {
                return Err(bad("one {name} per segment"));
            }
            if name.is_empty() || name.contains('{') {
                return Err(bad("a parameter needs a name"));
            }
            if names.contains(&name) {
                return Err(bad(&format!("{} appears twice", quote(name))));
            }
            names.push(name);
            segments.push(Segment::Param { prefix: prefix.to_owned(), name: name.to_owned(), suffix: suffix.to_owned() });
        }
        Ok(Self { segments })
    }

    /// The parameter names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Param { name, .. } => Some(name.as_str()),
                Segment::Literal(_) => None,
            })
            .collect()
    }

    /// The parameter values of `request_path` (without query), percent-decoded, or `None` when it
    /// does not match. Literal segments compare exactly; a parameter's value is not empty.
    pub fn matches(&self, request_path: &str) -> Option<Vec<(String, String)>> {
        let rest = request_path.strip_prefix('/')?;
        let mut values = Vec::new();
        let mut pieces = rest.split('/');
        for segment in &self.segments {
            let piece = pieces.next()?;
            match segment {
                Segment::Literal(l) if l == piece => {}
                Segment::Literal(_) => return None,
                Segment::Param { prefix, name, suffix } => {
                    let raw = piece.strip_prefix(prefix.as_str())?.strip_suffix(suffix.as_str())?;
                    if raw.is_empty() {
                        return None;
                    }
                    values.push((name.clone(), percent_decode_str(raw).decode_utf8_lossy().into_owned()));
                }
            }
        }
        match pieces.next() {
            None => Some(values),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_segments_and_decode_values() {
        let t = PathTemplate::compile("/pets/{id}/photos/{name}.jpg", &FieldPath::root()).unwrap();
        assert_eq!(t.names(), vec!["id", "name"]);
        assert_eq!(
            t.matches("/pets/a%20b/photos/x.jpg"),
            Some(vec![("id".to_owned(), "a b".to_owned()), ("name".to_owned(), "x".to_owned())])
        );
        assert_eq!(t.matches("/pets/1/photos/x.png"), None);
        assert_eq!(t.matches("/pets/1/photos/x.jpg/more"), None);
        assert_eq!(t.matches("/pets//photos/x.jpg"), None);
        for bad in ["pets", "/pets/{id", "/pets/{}", "/pets/{a}{b}", "/{a}/{a}", "/a?b"] {
            assert!(PathTemplate::compile(bad, &FieldPath::root()).is_err(), "{bad}");
        }
    }
}
