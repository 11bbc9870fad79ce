//! Request parameters: OpenAPI Parameter Objects (path, query, header, cookie) compiled once and
//! checked per request.
//!
//! ```text
//! on_configure: ParamSet::compile(&rule.parameters, &template.names(), &|s, p| compile(s, p), &path)?
//! per request:  set.check(&ParamInput { path_params, raw_query, headers }, max_errors)  // [] when valid
//! ```
//!
//! A value is taken from its place by `style` and `explode` (the OpenAPI 3.1.1 style table, with
//! RFC 6570's commas for `label` without `explode`), turned into the JSON value its schema's
//! `type` asks for ([`coercion`](#coercion)), and validated with the parameter's compiled schema.
//! Errors are [`BodyError`]s whose instance pointer starts with the parameter's place:
//! `/query/limit`, `/path/id`, `/header/x-trace` (lowercase), `/cookie/session`, then the pointer
//! inside the value (`/query/tags/1`).
//!
//! # Coercion
//! Every value arrives as a string. It becomes an integer, number, boolean or `null` only where
//! the schema names that type (`type`, a string or a list) at the top level, in `items`, or in
//! `properties` / `additionalProperties`. Types are looked for through `$ref` (resolved by the
//! caller's resolver: inside the parameter's schema for the plain form, inside the document for
//! OpenAPI), `allOf` (all members), `anyOf` / `oneOf` (the union of their members), and failing
//! all of those the JSON types of `enum` / `const` values. A value that does not parse as any
//! of the types stays a string, so the validator reports a `type` error at the right pointer.
//! Numbers follow JSON's grammar (`+1`, `01`, ` 1`, `0x1` stay strings; beyond f64 too);
//! booleans are `true` / `false`; `null` is `null`, or the empty value when the schema allows
//! no string. A schema whose type cannot be seen (`{}`) gets strings. The top-level types also choose the
//! shape: `object` (without `array`) is an object, `array` an array, anything else a primitive;
//! `deepObject` is always an object.
//!
//! # Decoding and bounds
//! - Query: pairs split on `&`, then on the first `=`; names and values percent-decoded with `+`
//!   as a space. `form` and `simple`-like lists split on the raw `,` before decoding (an encoded
//!   `%2C` stays inside its item); `spaceDelimited` and `pipeDelimited` split after decoding.
//!   A query of more than [`MAX_QUERY_PAIRS`] non-empty pairs is refused as a whole (a parameter
//!   past the limit could otherwise reach the upstream unchecked).
//! - Path: values arrive percent-decoded (the router decodes a segment once), so an encoded
//!   `,` `.` `;` or `=` inside a `simple` / `label` / `matrix` array or object item splits it.
//! - Header: every line of the name, joined with `,`; `Accept`, `Content-Type` and
//!   `Authorization` parameters are ignored (as the specification says).
//! - Cookie: `cookie` headers split on `;`, values not decoded (RFC 6265 values are opaque);
//!   more than [`MAX_COOKIE_PAIRS`] pairs is refused as a whole.
//! - One value yields at most [`MAX_ITEMS`] array items or object members; more is an error.
//! - `deepObject` reads one level: `f[a][b]=1` is the member `a][b` (which `additionalProperties:
//!   false` refuses).
//! - Errors other than the schema's: `required` (missing), `style` (not in the style's form, too
//!   many items, a member twice), `content` (not JSON), `maxProperties` at `/query` or `/cookie`.
//! - A primitive given more than once (`?limit=1&limit=9999`) has every occurrence validated, and
//!   an object member given twice is an error: an upstream reading the last one sees a checked value.

mod read;
mod template;
mod types;

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::Value;

use gatewarden_policy::error::{quote, ConfigError, FieldPath};
use gatewarden_policy::facts::HeaderNeeds;

use crate::schema::{BodyError, BodySchema};

use read::{cookie_pairs, decode_query, from_pairs, query_pairs, read_value, single, Found};
pub use template::PathTemplate;
use types::{shape_of, Shape};

/// The most non-empty query pairs looked at; a query with more is refused (`/query`, `maxProperties`).
pub const MAX_QUERY_PAIRS: usize = 256;
/// The most cookie pairs looked at; more is refused (`/cookie`, `maxProperties`).
pub const MAX_COOKIE_PAIRS: usize = 256;
/// The most array items or object members one parameter value may yield.
pub const MAX_ITEMS: usize = 1024;
/// Header parameters the specification says to ignore (they have their own OpenAPI fields).
const IGNORED_HEADERS: [&str; 3] = ["accept", "content-type", "authorization"];
/// The fields of a Parameter Object (`x-…` extensions are also accepted).
const PARAM_FIELDS: [&str; 13] = [
    "name",
    "in",
    "description",
    "required",
    "deprecated",
    "allowEmptyValue",
    "style",
    "explode",
    "allowReserved",
    "schema",
    "example",
    "examples",
    "content",
];

/// Compiles a parameter's schema found at the given field path (the plain form:
/// [`BodySchema::compile`]; OpenAPI: with the document's `$ref`s).
pub type CompileSchema<'a> = &'a dyn Fn(&Value, &FieldPath) -> Result<Arc<BodySchema>, ConfigError>;
/// Resolves a `$ref` met while looking for a parameter's types: `(schema, reference)` where
/// `schema` is the parameter's schema. `None`: unknown (the value keeps its string).
pub type ResolveRef<'a> = &'a dyn Fn(&Value, &str) -> Option<Value>;

/// Where a parameter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Path,
    Query,
    Header,
    Cookie,
}

impl Location {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Path => "path",
            Self::Query => "query",
            Self::Header => "header",
            Self::Cookie => "cookie",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Path, Self::Query, Self::Header, Self::Cookie].into_iter().find(|l| l.as_str() == s)
    }

    const fn default_style(self) -> Style {
        match self {
            Self::Path | Self::Header => Style::Simple,
            Self::Query | Self::Cookie => Style::Form,
        }
    }

    const fn styles(self) -> &'static [Style] {
        match self {
            Self::Path => &[Style::Simple, Style::Label, Style::Matrix],
            Self::Query => &[Style::Form, Style::SpaceDelimited, Style::PipeDelimited, Style::DeepObject],
            Self::Header => &[Style::Simple],
            Self::Cookie => &[Style::Form],
        }
    }
}

/// How a value is serialised (OpenAPI `style`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Simple,
    Label,
    Matrix,
    Form,
    SpaceDelimited,
    PipeDelimited,
    DeepObject,
}

impl Style {
    const ALL: [Style; 7] =
        [Self::Simple, Self::Label, Self::Matrix, Self::Form, Self::SpaceDelimited, Self::PipeDelimited, Self::DeepObject];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Simple => "simple",
            Self::Label => "label",
            Self::Matrix => "matrix",
            Self::Form => "form",
            Self::SpaceDelimited => "spaceDelimited",
            Self::PipeDelimited => "pipeDelimited",
            Self::DeepObject => "deepObject",
        }
    }
}

/// What a request gives the parameters.
#[derive(Debug, Clone, Copy)]
pub struct ParamInput<'a> {
    /// The path template's values by name, percent-decoded.
    pub path_params: &'a [(String, String)],
    /// The query string after `?` (without `#…`), raw; `None` when the path has no `?`.
    pub raw_query: Option<&'a str>,
    /// The request headers (names lowercase; `cookie` lines included).
    pub headers: &'a [(String, String)],
}

/// How a value is read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Parse {
    Styled {
        style: Style,
        explode: bool,
        shape: Shape,
    },
    /// `content` with a JSON media type: the value is parsed as JSON.
    Json,
    /// `content` with `text/plain`: the value as a string.
    Text,
}

#[derive(Debug, Clone)]
struct Param {
    /// As declared; lowercase for a header.
    name: String,
    location: Location,
    required: bool,
    parse: Parse,
    schema: Arc<BodySchema>,
    /// `/query/limit`: the instance pointer of the value.
    pointer: String,
}

/// A compiled list of parameters (empty when the rule has none).
#[derive(Debug, Clone, Default)]
pub struct ParamSet {
    params: Vec<Param>,
    /// Every declared query parameter name: an exploded `form` object with
    /// `additionalProperties` takes every other query pair.
    query_names: Vec<String>,
    /// Every declared cookie parameter name, for the same reason.
    cookie_names: Vec<String>,
}

impl ParamSet {
    /// Compiles the Parameter Objects `params` (found at `path`, each at `path[i]`);
    /// `path_template_names` are the names a `path` parameter may have. `$ref`s inside a
    /// parameter's schema are followed (for coercion types) inside that schema only; OpenAPI
    /// documents use [`Self::compile_with_refs`].
    pub fn compile(
        params: &[Value],
        path_template_names: &[&str],
        compile_schema: CompileSchema<'_>,
        path: &FieldPath,
    ) -> Result<ParamSet, ConfigError> {
        Self::compile_with_refs(params, path_template_names, compile_schema, &local_ref, path)
    }

    /// [`Self::compile`] with the `$ref` resolver used to find coercion types.
    pub fn compile_with_refs(
        params: &[Value],
        path_template_names: &[&str],
        compile_schema: CompileSchema<'_>,
        resolve: ResolveRef<'_>,
        path: &FieldPath,
    ) -> Result<ParamSet, ConfigError> {
        let mut set = ParamSet::default();
        for (i, raw) in params.iter().enumerate() {
            let at = path.index(i);
            let Some(p) = compile_param(raw, path_template_names, compile_schema, resolve, &at)? else {
                continue;
            };
            if set.params.iter().any(|q| q.location == p.location && q.name == p.name) {
                return Err(at.field("name").error(format!("duplicate {} parameter {}", p.location.as_str(), quote(&p.name))));
            }
            match p.location {
                Location::Query => set.query_names.push(p.name.clone()),
                Location::Cookie => set.cookie_names.push(p.name.clone()),
                Location::Path | Location::Header => {}
            }
            set.params.push(p);
        }
        Ok(set)
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Adds the headers the parameters read (header parameters, `cookie`).
    pub fn add_needs(&self, needs: &mut HeaderNeeds) {
        for p in &self.params {
            match p.location {
                Location::Header => needs.add(&p.name),
                Location::Cookie => needs.add("cookie"),
                Location::Path | Location::Query => {}
            }
        }
    }

    /// Whether any parameter is in the query (the caller may then pass the raw query).
    pub fn reads_query(&self) -> bool {
        !self.query_names.is_empty()
    }

    /// At most `max_errors` errors of the request's parameters (none when they are valid).
    pub fn check(&self, input: &ParamInput<'_>, max_errors: usize) -> Vec<BodyError> {
        let mut errors = Vec::new();
        if self.params.is_empty() || max_errors == 0 {
            return errors;
        }
        let query = if self.reads_query() { Some(query_pairs(input.raw_query.unwrap_or(""))) } else { None };
        let cookies = if !self.cookie_names.is_empty() { Some(cookie_pairs(input.headers)) } else { None };
        for (pairs, place) in [(&query, "/query"), (&cookies, "/cookie")] {
            if let Some(None) = pairs {
                let limit = if place == "/query" { MAX_QUERY_PAIRS } else { MAX_COOKIE_PAIRS };
                errors.push(style_error(place, "maxProperties", &format!("more than {limit} parameters")));
            }
        }
        for p in &self.params {
            if errors.len() >= max_errors {
                break;
            }
            let found = match p.location {
                Location::Path => single(input.path_params.iter().find(|(n, _)| *n == p.name).map(|(_, v)| v.as_str())),
                Location::Header => {
                    let mut lines = input.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(&p.name)).map(|(_, v)| v.as_str());
                    match (lines.next(), lines.next()) {
                        (None, _) => Found::Missing,
                        (Some(one), None) => Found::Raw(vec![Cow::Borrowed(one)]),
                        (Some(first), Some(second)) => {
                            let mut joined = format!("{first},{second}");
                            for more in lines {
                                joined.push(',');
                                joined.push_str(more);
                            }
                            Found::Raw(vec![Cow::Owned(joined)])
                        }
                    }
                }
                Location::Query => match &query {
                    Some(Some(pairs)) => from_pairs(p, pairs, &self.query_names, decode_query),
                    _ => continue,
                },
                Location::Cookie => match &cookies {
                    Some(Some(pairs)) => from_pairs(p, pairs, &self.cookie_names, Cow::Borrowed),
                    _ => continue,
                },
            };
            let values = match found {
                Found::Missing if p.required => {
                    let message = format!("the {} parameter {} is required", p.location.as_str(), quote(&p.name));
                    errors.push(style_error(&p.pointer, "required", &message));
                    continue;
                }
                Found::Missing => continue,
                Found::Invalid(message) => {
                    errors.push(style_error(&p.pointer, "style", message));
                    continue;
                }
                Found::Values(values) => values,
                Found::Raw(raws) => match raws.iter().map(|raw| read_value(p, raw)).collect::<Result<Vec<_>, _>>() {
                    Ok(values) => values,
                    Err((keyword, message)) => {
                        errors.push(style_error(&p.pointer, keyword, message));
                        continue;
                    }
                },
            };
            for value in &values {
                if errors.len() >= max_errors {
                    break;
                }
                if p.schema.is_valid(value) {
                    continue;
                }
                for e in p.schema.errors(value, max_errors - errors.len()) {
                    errors.push(BodyError { instance: format!("{}{}", p.pointer, e.instance), ..e });
                }
            }
        }
        errors.truncate(max_errors);
        errors
    }
}

/// The `$ref` resolver of the plain form: a JSON pointer inside the parameter's own schema.
pub(super) fn local_ref(schema: &Value, reference: &str) -> Option<Value> {
    schema.pointer(reference.strip_prefix('#')?).cloned()
}

fn compile_param(
    raw: &Value,
    path_names: &[&str],
    compile_schema: CompileSchema<'_>,
    resolve: ResolveRef<'_>,
    at: &FieldPath,
) -> Result<Option<Param>, ConfigError> {
    let Value::Object(obj) = raw else {
        return Err(at.error(format!("a parameter must be an object, got {}", quote(&raw.to_string()))));
    };
    if obj.contains_key("$ref") {
        return Err(at.field("$ref").error("a parameter reference must be resolved before its parameters are compiled"));
    }
    if let Some(k) = obj.keys().find(|k| !k.starts_with("x-") && !PARAM_FIELDS.contains(&k.as_str())) {
        return Err(at.field(k).error(format!("unknown field {}, expected one of {}", quote(k), PARAM_FIELDS.join(", "))));
    }
    let string = |field: &str| -> Result<Option<&str>, ConfigError> {
        match obj.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(at.field(field).error(format!("must be a string, got {}", quote(&other.to_string())))),
        }
    };
    let boolean = |field: &str| -> Result<Option<bool>, ConfigError> {
        match obj.get(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(at.field(field).error(format!("must be true or false, got {}", quote(&other.to_string())))),
        }
    };
    let name = string("name")?.ok_or_else(|| at.error("missing field `name`"))?;
    if name.is_empty() {
        return Err(at.field("name").error("a parameter name must not be empty"));
    }
    let location_name = string("in")?.ok_or_else(|| at.error("missing field `in`"))?;
    let location = Location::parse(location_name).ok_or_else(|| {
        at.field("in").error(format!("unknown location {}, expected one of path, query, header, cookie", quote(location_name)))
    })?;
    let required = boolean("required")?;
    for field in ["deprecated", "allowEmptyValue", "allowReserved"] {
        boolean(field)?;
    }
    string("description")?;
    if location == Location::Path {
        if required == Some(false) {
            return Err(at.field("required").error("a path parameter is always required, got false"));
        }
        if !path_names.contains(&name) {
            let names: Vec<String> = path_names.iter().map(|n| quote(n)).collect();
            let known = if names.is_empty() { "none".to_owned() } else { names.join(", ") };
            return Err(at.field("name").error(format!("path parameter {} is not in the path template (its names: {known})", quote(name))));
        }
    }
    let style = match string("style")? {
        None => location.default_style(),
        Some(s) => {
            let style = Style::ALL.into_iter().find(|st| st.as_str() == s);
            match style {
                Some(st) if location.styles().contains(&st) => st,
                _ => {
                    let allowed: Vec<&str> = location.styles().iter().map(|st| st.as_str()).collect();
                    return Err(at.field("style").error(format!(
                        "style {} is not allowed in {}: use {}",
                        quote(s),
                        location.as_str(),
                        allowed.join(", ")
                    )));
                }
            }
        }
    };
    let explode = boolean("explode")?.unwrap_or(style == Style::Form);
    let (schema, parse) = match (obj.get("schema"), obj.get("content")) {
        (Some(_), Some(_)) => return Err(at.field("content").error("give schema or content, not both")),
        (None, None) => return Err(at.error("a parameter needs schema or content")),
        (Some(s), None) => {
            let schema = compile_schema(s, &at.field("schema"))?;
            let shape = shape_of(s, style, resolve);
            (schema, Parse::Styled { style, explode, shape })
        }
        (None, Some(content)) => compile_content(content, compile_schema, &at.field("content"))?,
    };
    if location == Location::Header && IGNORED_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name)) {
        return Ok(None);
    }
    let name = if location == Location::Header { name.to_ascii_lowercase() } else { name.to_owned() };
    let pointer = format!("/{}/{}", location.as_str(), name.replace('~', "~0").replace('/', "~1"));
    Ok(Some(Param { name, location, required: required.unwrap_or(location == Location::Path), parse, schema, pointer }))
}

fn compile_content(content: &Value, compile_schema: CompileSchema<'_>, at: &FieldPath) -> Result<(Arc<BodySchema>, Parse), ConfigError> {
    let Value::Object(map) = content else {
        return Err(at.error(format!("content must be an object of one media type, got {}", quote(&content.to_string()))));
    };
    let mut entries = map.iter();
    let (Some((media, object)), None) = (entries.next(), entries.next()) else {
        return Err(at.error(format!("content must hold exactly one media type, got {}", map.len())));
    };
    let essence = media.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let parse = if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
        Parse::Json
    } else if essence == "text/plain" {
        Parse::Text
    } else {
        return Err(at.field(media).error(format!(
            "media type {} cannot be read from a parameter: use application/json, application/*+json or text/plain",
            quote(media)
        )));
    };
    let Value::Object(mt) = object else {
        return Err(at.field(media).error(format!("a media type must be an object, got {}", quote(&object.to_string()))));
    };
    let any = Value::Bool(true);
    let schema = compile_schema(mt.get("schema").unwrap_or(&any), &at.field(media).field("schema"))?;
    Ok((schema, parse))
}

pub(super) fn style_error(pointer: &str, keyword: &str, message: &str) -> BodyError {
    BodyError { instance: pointer.to_owned(), schema: String::new(), keyword: keyword.to_owned(), message: message.to_owned() }
}
