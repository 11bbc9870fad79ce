//! Locations inside an OpenAPI document: JSON pointers (RFC 6901) that also know which of
//! their tokens are array indexes, so a configuration error reads
//! `rules[0].openapi.document.paths./pets.post.parameters[1].schema.minimum`.

use std::fmt::Write;

use serde_json::Value;

use gatewarden_policy::error::FieldPath;

/// The URI the (translated) document is registered under in the validator's registry. Every
/// `#/…` reference of the document is rewritten to `DOC_URI#/…`, so any schema of the document
/// compiles on its own and still reaches the document's components.
pub(crate) const DOC_URI: &str = "https://gatewarden.invalid/openapi";

/// One step of a location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tok {
    Key(String),
    Index(usize),
}

/// A location inside the document.
pub(crate) type Loc = Vec<Tok>;

/// The location's key child.
pub(crate) fn key(loc: &[Tok], k: &str) -> Loc {
    let mut out = loc.to_vec();
    out.push(Tok::Key(k.to_owned()));
    out
}

/// The location's index child.
pub(crate) fn index(loc: &[Tok], i: usize) -> Loc {
    let mut out = loc.to_vec();
    out.push(Tok::Index(i));
    out
}

/// The JSON pointer of `loc` (`/paths/~1pets/post`).
pub(crate) fn pointer(loc: &[Tok]) -> String {
    let mut out = String::new();
    for t in loc {
        out.push('/');
        match t {
            Tok::Key(k) => out.push_str(&k.replace('~', "~0").replace('/', "~1")),
            Tok::Index(i) => {
                let _ = write!(out, "{i}");
            }
        }
    }
    out
}

/// The field path of `loc` under `base` (the document's own path in the policy).
pub(crate) fn field_path(base: &FieldPath, loc: &[Tok]) -> FieldPath {
    loc.iter().fold(base.clone(), |p, t| match t {
        Tok::Key(k) => p.field(k),
        Tok::Index(i) => p.index(*i),
    })
}

/// The field path of the JSON pointer `ptr` (as jsonschema reports them) found below `loc`.
pub(crate) fn field_path_below(base: &FieldPath, doc_node: Option<&Value>, loc: &[Tok], ptr: &str) -> FieldPath {
    let mut full = loc.to_vec();
    full.extend(locate_tokens(doc_node, &split_pointer(ptr)));
    field_path(base, &full)
}

/// The node of `doc` at `loc`.
pub(crate) fn get<'a>(doc: &'a Value, loc: &[Tok]) -> Option<&'a Value> {
    loc.iter().try_fold(doc, |node, t| match (t, node) {
        (Tok::Key(k), Value::Object(m)) => m.get(k),
        (Tok::Index(i), Value::Array(a)) => a.get(*i),
        _ => None,
    })
}

/// The node of `doc` at `loc`, mutable.
pub(crate) fn get_mut<'a>(doc: &'a mut Value, loc: &[Tok]) -> Option<&'a mut Value> {
    loc.iter().try_fold(doc, |node, t| match (t, node) {
        (Tok::Key(k), Value::Object(m)) => m.get_mut(k),
        (Tok::Index(i), Value::Array(a)) => a.get_mut(*i),
        _ => None,
    })
}

/// The unescaped tokens of a JSON pointer (`""` has none).
pub(crate) fn split_pointer(ptr: &str) -> Vec<String> {
    ptr.split('/').skip(1).map(|t| t.replace("~1", "/").replace("~0", "~")).collect()
}

/// `tokens` as a location in `node`: a token naming an element of an array is an index.
/// `None` when the pointer does not resolve (the rest is then kept as keys, for messages).
pub(crate) fn locate(node: &Value, tokens: &[String]) -> Option<Loc> {
    let mut loc = Vec::with_capacity(tokens.len());
    let mut at = node;
    for t in tokens {
        match at {
            Value::Object(m) => {
                at = m.get(t)?;
                loc.push(Tok::Key(t.clone()));
            }
            Value::Array(a) => {
                let i: usize = t.parse().ok()?;
                at = a.get(i)?;
                loc.push(Tok::Index(i));
            }
            _ => return None,
        }
    }
    Some(loc)
}

/// Like [`locate`], but never fails: tokens past the last node found are keys.
fn locate_tokens(node: Option<&Value>, tokens: &[String]) -> Loc {
    let mut loc = Vec::with_capacity(tokens.len());
    let mut at = node;
    for t in tokens {
        match (at, t.parse::<usize>()) {
            (Some(Value::Array(a)), Ok(i)) => {
                loc.push(Tok::Index(i));
                at = a.get(i);
            }
            (n, _) => {
                loc.push(Tok::Key(t.clone()));
                at = n.and_then(|v| v.get(t));
            }
        }
    }
    loc
}

/// The absolute reference to `loc` in the registered document: `DOC_URI#` + the pointer,
/// percent-encoded for a URI fragment (`{` and `}` of path templates, spaces, non-ASCII).
pub(crate) fn doc_ref(loc: &[Tok]) -> String {
    format!("{DOC_URI}#{}", encode_fragment(&pointer(loc)))
}

/// `ptr` percent-encoded as a URI fragment (RFC 3986: `pchar`, `/` and `?` stay).
pub(crate) fn encode_fragment(ptr: &str) -> String {
    let mut out = String::with_capacity(ptr.len());
    for b in ptr.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_escape_and_locate_indexes() {
        let doc = json!({"paths": {"/pets/{id}": {"parameters": [{"name": "id"}]}}});
        let loc = locate(&doc, &split_pointer("/paths/~1pets~1{id}/parameters/0/name")).unwrap();
        assert_eq!(pointer(&loc), "/paths/~1pets~1{id}/parameters/0/name");
        assert_eq!(field_path(&FieldPath::root().field("d"), &loc).as_str(), "d.paths./pets/{id}.parameters[0].name");
        assert_eq!(doc_ref(&loc), format!("{DOC_URI}#/paths/~1pets~1%7Bid%7D/parameters/0/name"));
        assert_eq!(get(&doc, &loc), Some(&json!("id")));
    }
}
