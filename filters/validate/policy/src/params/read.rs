//! Reading a parameter's value from the request by its `style` and `explode`: query and cookie
//! pairs, path and header strings, their delimiters, and the bounds on what one value yields.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};

use super::types::{coerce, Shape, Types};
use super::{Param, Parse, Style, MAX_COOKIE_PAIRS, MAX_ITEMS, MAX_QUERY_PAIRS};

/// A parameter's value(s) as found in the request.
pub(super) enum Found<'r> {
    Missing,
    /// Raw strings, each read by the parameter's style (a primitive given more than once has several).
    Raw(Vec<Cow<'r, str>>),
    /// Values already built (form-style objects and arrays from several pairs).
    Values(Vec<Value>),
    Invalid(&'static str),
}

pub(super) fn single(v: Option<&str>) -> Found<'_> {
    match v {
        None => Found::Missing,
        Some(s) => Found::Raw(vec![Cow::Borrowed(s)]),
    }
}

/// The non-empty pairs of a raw query, names decoded, values raw; `None` past [`MAX_QUERY_PAIRS`].
pub(super) fn query_pairs(raw: &str) -> Option<Vec<(Cow<'_, str>, &str)>> {
    let mut pairs = Vec::new();
    for piece in raw.split('&').filter(|p| !p.is_empty()) {
        if pairs.len() == MAX_QUERY_PAIRS {
            return None;
        }
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        pairs.push((decode_query(name), value));
    }
    Some(pairs)
}

/// The pairs of every `cookie` header; `None` past [`MAX_COOKIE_PAIRS`].
pub(super) fn cookie_pairs(headers: &[(String, String)]) -> Option<Vec<(Cow<'_, str>, &str)>> {
    let mut pairs = Vec::new();
    for (_, line) in headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("cookie")) {
        for piece in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            if pairs.len() == MAX_COOKIE_PAIRS {
                return None;
            }
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            pairs.push((Cow::Borrowed(name.trim()), value.trim()));
        }
    }
    Some(pairs)
}

/// Percent-decodes a query name or value, `+` being a space (HTML form encoding).
pub(super) fn decode_query(raw: &str) -> Cow<'_, str> {
    if !raw.contains(['+', '%']) {
        return Cow::Borrowed(raw);
    }
    let spaced = raw.replace('+', " ");
    Cow::Owned(percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
}

/// A `form`, `spaceDelimited`, `pipeDelimited` or `deepObject` parameter from query or cookie pairs.
/// Whether the pair named `name` belongs to one of the `declared` parameters (`name`, or
/// `name[…]` of a deepObject).
fn is_claimed(name: &str, declared: &[String]) -> bool {
    declared.iter().any(|d| name.strip_prefix(d.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('[')))
}

pub(super) fn from_pairs<'r>(
    p: &Param,
    pairs: &[(Cow<'r, str>, &'r str)],
    claimed: &[String],
    decode: fn(&'r str) -> Cow<'r, str>,
) -> Found<'r> {
    let named = || pairs.iter().filter(|(n, _)| *n == p.name).map(|(_, v)| *v);
    let Parse::Styled { style, explode, shape } = &p.parse else {
        let raws: Vec<Cow<'r, str>> = named().map(decode).collect();
        return if raws.is_empty() { Found::Missing } else { Found::Raw(raws) };
    };
    match (style, shape) {
        (Style::DeepObject, Shape::Object { properties, additional }) => {
            let prefix = format!("{}[", p.name);
            let members = pairs.iter().filter_map(|(n, v)| {
                let key = n.strip_prefix(prefix.as_str())?.strip_suffix(']')?;
                Some((Cow::Owned(key.to_owned()), decode(v)))
            });
            object_of(members, properties, *additional)
        }
        (_, Shape::Object { properties, additional }) if *explode => {
            let members =
                pairs.iter().filter(|(n, _)| properties.iter().any(|(k, _)| k == n) || (additional.is_some() && !is_claimed(n, claimed)));
            object_of(members.map(|(n, v)| (n.clone(), decode(v))), properties, *additional)
        }
        (_, Shape::Array(items)) if *explode => {
            let values: Vec<Cow<'r, str>> = named().filter(|v| !v.is_empty()).map(decode).collect();
            if values.is_empty() && named().next().is_none() {
                return Found::Missing;
            }
            if values.len() > MAX_ITEMS {
                return Found::Invalid(TOO_MANY_ITEMS);
            }
            Found::Values(vec![Value::Array(values.iter().map(|v| coerce(v, *items)).collect())])
        }
        (_, Shape::Primitive(_)) => {
            let raws: Vec<Cow<'r, str>> = named().map(decode).collect();
            if raws.is_empty() {
                Found::Missing
            } else {
                Found::Raw(raws)
            }
        }
        _ => {
            let delimiter = match style {
                Style::SpaceDelimited => ' ',
                Style::PipeDelimited => '|',
                _ => ',',
            };
            let mut values = Vec::new();
            for raw in named() {
                let pieces: Result<Vec<Cow<'r, str>>, _> = if *style == Style::Form {
                    // Split on the raw comma before decoding: an encoded `%2C` stays in its item.
                    split(raw, ',').map(|p| p.into_iter().map(decode).collect())
                } else {
                    // The space and the pipe are sent encoded (`%20`, `+`, `%7C`) or not: decode first.
                    let decoded = decode(raw);
                    split(&decoded, delimiter).map(|p| p.into_iter().map(|s| Cow::Owned(s.to_owned())).collect())
                };
                match pieces.and_then(|pieces| build(shape, pieces)) {
                    Ok(v) => values.push(v),
                    Err(message) => return Found::Invalid(message),
                }
            }
            if values.is_empty() {
                Found::Missing
            } else {
                Found::Values(values)
            }
        }
    }
}

const TOO_MANY_ITEMS: &str = "the value has more than 1024 items";
const NOT_PAIRS: &str = "the object is not in name,value pairs";
const DUPLICATE_MEMBER: &str = "an object member is given more than once";

fn object_of<'r>(
    members: impl Iterator<Item = (Cow<'r, str>, Cow<'r, str>)>,
    properties: &[(String, Types)],
    additional: Option<Types>,
) -> Found<'r> {
    let mut map = Map::new();
    for (k, v) in members {
        if map.len() == MAX_ITEMS {
            return Found::Invalid(TOO_MANY_ITEMS);
        }
        let t = member_types(&k, properties, additional);
        if map.insert(k.into_owned(), coerce(&v, t)).is_some() {
            return Found::Invalid(DUPLICATE_MEMBER);
        }
    }
    if map.is_empty() {
        Found::Missing
    } else {
        Found::Values(vec![Value::Object(map)])
    }
}

fn member_types(name: &str, properties: &[(String, Types)], additional: Option<Types>) -> Types {
    properties.iter().find(|(k, _)| k == name).map(|(_, t)| *t).or(additional).unwrap_or_default()
}

/// `s` split on `delimiter`, at most [`MAX_ITEMS`] pieces; `""` has none.
fn split(s: &str, delimiter: char) -> Result<Vec<&str>, &'static str> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let pieces: Vec<&str> = s.split(delimiter).take(MAX_ITEMS + 1).collect();
    if pieces.len() > MAX_ITEMS {
        return Err(TOO_MANY_ITEMS);
    }
    Ok(pieces)
}

/// A value of `shape` from its pieces: a primitive from the one piece (all of them joined back
/// when a primitive held the delimiter), an array of items, an object of alternating name, value.
fn build(shape: &Shape, pieces: Vec<Cow<'_, str>>) -> Result<Value, &'static str> {
    match shape {
        Shape::Primitive(_) => Err("a primitive cannot be built from pieces"),
        Shape::Array(items) => Ok(Value::Array(pieces.iter().map(|p| coerce(p, *items)).collect())),
        Shape::Object { properties, additional } => {
            if !pieces.chunks_exact(2).remainder().is_empty() {
                return Err(NOT_PAIRS);
            }
            let mut map = Map::new();
            let mut it = pieces.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                let t = member_types(&k, properties, *additional);
                if map.insert(k.into_owned(), coerce(&v, t)).is_some() {
                    return Err(DUPLICATE_MEMBER);
                }
            }
            Ok(Value::Object(map))
        }
    }
}

/// An object from `name=value` pieces (exploded `simple`, `label`, `matrix`).
fn build_exploded_object(pieces: Vec<&str>, properties: &[(String, Types)], additional: Option<Types>) -> Result<Value, &'static str> {
    let mut map = Map::new();
    for piece in pieces {
        let (k, v) = piece.split_once('=').ok_or(NOT_PAIRS)?;
        let t = member_types(k, properties, additional);
        if map.insert(k.to_owned(), coerce(v, t)).is_some() {
            return Err(DUPLICATE_MEMBER);
        }
    }
    Ok(Value::Object(map))
}

/// One raw value (path, header, a query or cookie primitive, a `content` value) read as the
/// parameter says; `Err((keyword, message))` when it cannot be.
pub(super) fn read_value(p: &Param, raw: &str) -> Result<Value, (&'static str, &'static str)> {
    let style_err = |m| ("style", m);
    match &p.parse {
        Parse::Json => serde_json::from_str(raw).map_err(|_| ("content", "the value is not JSON")),
        Parse::Text => Ok(Value::String(raw.to_owned())),
        Parse::Styled { style, explode, shape } => {
            // The value without its style's prefix, and the delimiter of its pieces.
            let (body, delimiter) = match style {
                Style::Label => {
                    (raw.strip_prefix('.').ok_or(style_err("a label value starts with \".\""))?, if *explode { '.' } else { ',' })
                }
                Style::Matrix => {
                    let body = raw.strip_prefix(';').ok_or(style_err("a matrix value starts with \";\""))?;
                    if *explode && !matches!(shape, Shape::Primitive(_)) {
                        return matrix_exploded(p, body, shape).map_err(style_err);
                    }
                    let named = body.strip_prefix(p.name.as_str()).ok_or(style_err("a matrix value starts with \";\" and its name"))?;
                    match named.strip_prefix('=') {
                        Some(v) => (v, ','),
                        None if named.is_empty() => ("", ','),
                        None => return Err(style_err("a matrix value starts with \";\" and its name")),
                    }
                }
                _ => (raw, ','),
            };
            match shape {
                Shape::Primitive(t) => Ok(coerce(body, *t)),
                Shape::Object { properties, additional } if *explode && *style != Style::Form => {
                    build_exploded_object(split(body, delimiter).map_err(style_err)?, properties, *additional).map_err(style_err)
                }
                _ => {
                    let pieces = split(body, delimiter).map_err(style_err)?;
                    build(shape, pieces.into_iter().map(Cow::Borrowed).collect()).map_err(style_err)
                }
            }
        }
    }
}

/// An exploded `matrix` array (`;color=blue;color=black`) or object (`;R=100;G=200`).
fn matrix_exploded(p: &Param, body: &str, shape: &Shape) -> Result<Value, &'static str> {
    let pieces = split(body, ';')?;
    match shape {
        Shape::Array(items) => {
            let mut values = Vec::with_capacity(pieces.len());
            for piece in pieces {
                let rest = piece.strip_prefix(p.name.as_str()).ok_or("each matrix item is \"name=value\"")?;
                let v = rest.strip_prefix('=').or(rest.is_empty().then_some("")).ok_or("each matrix item is \"name=value\"")?;
                values.push(coerce(v, *items));
            }
            Ok(Value::Array(values))
        }
        Shape::Object { properties, additional } => build_exploded_object(pieces, properties, *additional),
        Shape::Primitive(t) => Ok(coerce(body, *t)),
    }
}
