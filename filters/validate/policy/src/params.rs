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
//! A schema whose type cannot be seen (`{}`) gets strings. The top-level types also choose the
//! shape: `object` (without `array`) is an object, `array` an array, anything else a primitive;
//! `deepObject` is always an object.
//!
//! # Decoding and bounds
//! - Query: pairs split on `&`, then on the first `=`; names and values percent-decoded with `+`
//!   as a space. `form` and `simple`-like lists split on the raw `,` before decoding (an encoded
//!   `%2C` stays inside its item); `spaceDelimited` and `pipeDelimited` split after decoding.
//!   A query of more than [`MAX_QUERY_PAIRS`] non-empty pairs is refused as a whole (a parameter
//!   past the limit could otherwise reach the upstream unchecked).
//! - Path: values arrive percent-decoded (the router decodes a segment once).
//! - Header: every line of the name, joined with `,`; `Accept`, `Content-Type` and
//!   `Authorization` parameters are ignored (as the specification says).
//! - Cookie: `cookie` headers split on `;`, values not decoded (RFC 6265 values are opaque);
//!   more than [`MAX_COOKIE_PAIRS`] pairs is refused as a whole.
//! - One value yields at most [`MAX_ITEMS`] array items or object members; more is an error.
//! - A primitive given more than once (`?limit=1&limit=9999`) has every occurrence validated, and
//!   an object member given twice is an error: an upstream reading the last one sees a checked value.

use std::borrow::Cow;
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use serde_json::{Map, Number, Value};

use gatewarden_policy::error::{quote, ConfigError, FieldPath};
use gatewarden_policy::facts::HeaderNeeds;

use crate::schema::{BodyError, BodySchema};

/// The most non-empty query pairs looked at; a query with more is refused (`/query`, `maxProperties`).
pub const MAX_QUERY_PAIRS: usize = 256;
/// The most cookie pairs looked at; more is refused (`/cookie`, `maxProperties`).
pub const MAX_COOKIE_PAIRS: usize = 256;
/// The most array items or object members one parameter value may yield.
pub const MAX_ITEMS: usize = 1024;
/// How deep `$ref`, `allOf`, `anyOf` and `oneOf` are followed to find a parameter's types.
const MAX_TYPE_DEPTH: usize = 16;
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

/// The JSON types a schema names (bit set); empty: unknown, values stay strings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Types(u8);

impl Types {
    const STRING: u8 = 1;
    const INTEGER: u8 = 2;
    const NUMBER: u8 = 4;
    const BOOLEAN: u8 = 8;
    const NULL: u8 = 16;
    const ARRAY: u8 = 32;
    const OBJECT: u8 = 64;

    fn named(name: &str) -> u8 {
        match name {
            "string" => Self::STRING,
            "integer" => Self::INTEGER,
            "number" => Self::NUMBER,
            "boolean" => Self::BOOLEAN,
            "null" => Self::NULL,
            "array" => Self::ARRAY,
            "object" => Self::OBJECT,
            _ => 0,
        }
    }

    fn of_value(v: &Value) -> u8 {
        match v {
            Value::Null => Self::NULL,
            Value::Bool(_) => Self::BOOLEAN,
            Value::Number(n) if n.is_f64() => Self::NUMBER,
            Value::Number(_) => Self::INTEGER | Self::NUMBER,
            Value::String(_) => Self::STRING,
            Value::Array(_) => Self::ARRAY,
            Value::Object(_) => Self::OBJECT,
        }
    }

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// The shape a value is parsed into.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    Primitive(Types),
    Array(Types),
    /// Named members with their types; `additional`: the types of other members, `None` when the
    /// schema names no `additionalProperties` (an exploded `form` object then takes only the
    /// named members from the query).
    Object {
        properties: Vec<(String, Types)>,
        additional: Option<Types>,
    },
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
            if p.location == Location::Query {
                set.query_names.push(p.name.clone());
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
        let cookies = if self.params.iter().any(|p| p.location == Location::Cookie) { Some(cookie_pairs(input.headers)) } else { None };
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
                    Some(Some(pairs)) => from_pairs(p, pairs, &[], Cow::Borrowed),
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
fn local_ref(schema: &Value, reference: &str) -> Option<Value> {
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

/// The shape and coercion types of a parameter with `schema` (see the module docs).
fn shape_of(schema: &Value, style: Style, resolve: ResolveRef<'_>) -> Shape {
    let find = TypeFinder { root: schema, resolve };
    let types = find.types(schema, 0);
    let object = style == Style::DeepObject || (types.has(Types::OBJECT) && !types.has(Types::ARRAY));
    let parts = find.conjuncts(schema, 0);
    if object {
        let mut properties: Vec<(String, Types)> = Vec::new();
        let mut additional: Option<Types> = None;
        let mut closed = false;
        for part in &parts {
            if let Some(Value::Object(props)) = part.get("properties") {
                for (k, v) in props {
                    if !properties.iter().any(|(n, _)| n == k) {
                        properties.push((k.clone(), find.types(v, 1)));
                    }
                }
            }
            match part.get("additionalProperties") {
                Some(Value::Bool(false)) => closed = true,
                Some(Value::Bool(true)) => additional = additional.or(Some(Types::default())),
                Some(v @ Value::Object(_)) => additional = Some(find.types(v, 1)),
                _ => {}
            }
        }
        if style == Style::DeepObject && additional.is_none() && !closed {
            additional = Some(Types::default());
        }
        return Shape::Object { properties, additional: if closed { None } else { additional } };
    }
    if types.has(Types::ARRAY) {
        let items = parts.iter().find_map(|p| p.get("items").filter(|i| i.is_object())).map(|i| find.types(i, 1)).unwrap_or_default();
        return Shape::Array(items);
    }
    Shape::Primitive(types)
}

struct TypeFinder<'a> {
    root: &'a Value,
    resolve: ResolveRef<'a>,
}

impl TypeFinder<'_> {
    /// `node` and what it must also satisfy: its `$ref` target and `allOf` members, recursively.
    fn conjuncts(&self, node: &Value, depth: usize) -> Vec<Value> {
        let mut out = Vec::new();
        self.collect(node, depth, &mut out);
        out
    }

    fn collect(&self, node: &Value, depth: usize, out: &mut Vec<Value>) {
        if depth > MAX_TYPE_DEPTH || out.len() > 64 {
            return;
        }
        out.push(node.clone());
        if let Some(target) = node.get("$ref").and_then(Value::as_str).and_then(|r| (self.resolve)(self.root, r)) {
            self.collect(&target, depth + 1, out);
        }
        if let Some(Value::Array(all)) = node.get("allOf") {
            for member in all {
                self.collect(member, depth + 1, out);
            }
        }
    }

    fn types(&self, node: &Value, depth: usize) -> Types {
        let parts = self.conjuncts(node, depth);
        let mut bits = 0u8;
        for part in &parts {
            match part.get("type") {
                Some(Value::String(t)) => bits |= Types::named(t),
                Some(Value::Array(ts)) => bits |= ts.iter().filter_map(Value::as_str).fold(0, |b, t| b | Types::named(t)),
                _ => {}
            }
            // OpenAPI 3.0's `nullable: true` (the openapi part translates it; seen here too).
            if part.get("nullable") == Some(&Value::Bool(true)) {
                bits |= Types::NULL;
            }
        }
        if bits & !Types::NULL != 0 || depth > MAX_TYPE_DEPTH {
            return Types(bits);
        }
        for part in &parts {
            for key in ["anyOf", "oneOf"] {
                if let Some(Value::Array(members)) = part.get(key) {
                    for m in members {
                        let t = self.types(m, depth + 1);
                        if t == Types::default() {
                            return Types::default();
                        }
                        bits |= t.0;
                    }
                }
            }
        }
        if bits & !Types::NULL != 0 {
            return Types(bits);
        }
        for part in &parts {
            if let Some(Value::Array(values)) = part.get("enum") {
                bits |= values.iter().fold(0, |b, v| b | Types::of_value(v));
            }
            if let Some(v) = part.get("const") {
                bits |= Types::of_value(v);
            }
        }
        Types(bits)
    }
}

/// A parameter's value(s) as found in the request.
enum Found<'r> {
    Missing,
    /// Raw strings, each read by the parameter's style (a primitive given more than once has several).
    Raw(Vec<Cow<'r, str>>),
    /// Values already built (form-style objects and arrays from several pairs).
    Values(Vec<Value>),
    Invalid(&'static str),
}

fn single(v: Option<&str>) -> Found<'_> {
    match v {
        None => Found::Missing,
        Some(s) => Found::Raw(vec![Cow::Borrowed(s)]),
    }
}

/// The non-empty pairs of a raw query, names decoded, values raw; `None` past [`MAX_QUERY_PAIRS`].
fn query_pairs(raw: &str) -> Option<Vec<(Cow<'_, str>, &str)>> {
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
fn cookie_pairs(headers: &[(String, String)]) -> Option<Vec<(Cow<'_, str>, &str)>> {
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
fn decode_query(raw: &str) -> Cow<'_, str> {
    if !raw.contains(['+', '%']) {
        return Cow::Borrowed(raw);
    }
    let spaced = raw.replace('+', " ");
    Cow::Owned(percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
}

/// A `form`, `spaceDelimited`, `pipeDelimited` or `deepObject` parameter from query or cookie pairs.
fn from_pairs<'r>(p: &Param, pairs: &[(Cow<'r, str>, &'r str)], claimed: &[String], decode: fn(&'r str) -> Cow<'r, str>) -> Found<'r> {
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
            let members = pairs
                .iter()
                .filter(|(n, _)| properties.iter().any(|(k, _)| k == n) || (additional.is_some() && !claimed.iter().any(|c| c == n)));
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
fn read_value(p: &Param, raw: &str) -> Result<Value, (&'static str, &'static str)> {
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

/// `s` as the first of `types` it parses as (integer, number, boolean, null), else a string.
fn coerce(s: &str, types: Types) -> Value {
    let numeric = types.has(Types::INTEGER) || types.has(Types::NUMBER);
    if numeric && s.trim() == s && !s.is_empty() {
        // JSON's number grammar (no `+`, no leading zeros, no hex); beyond f64 stays a string.
        if let Ok(n) = serde_json::from_str::<Number>(s) {
            return Value::Number(n);
        }
    }
    if types.has(Types::BOOLEAN) {
        match s {
            "true" => return Value::Bool(true),
            "false" => return Value::Bool(false),
            _ => {}
        }
    }
    if types.has(Types::NULL) && (s == "null" || (s.is_empty() && !types.has(Types::STRING))) {
        return Value::Null;
    }
    Value::String(s.to_owned())
}

fn style_error(pointer: &str, keyword: &str, message: &str) -> BodyError {
    BodyError { instance: pointer.to_owned(), schema: String::new(), keyword: keyword.to_owned(), message: message.to_owned() }
}

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
    use serde_json::json;

    fn shape(schema: Value, style: Style) -> Shape {
        shape_of(&schema, style, &local_ref)
    }

    #[test]
    fn types_are_found_through_refs_all_of_any_of_and_enums() {
        let int = Shape::Primitive(Types(Types::INTEGER));
        assert_eq!(shape(json!({"type": "integer"}), Style::Form), int);
        assert_eq!(shape(json!({"$defs": {"n": {"type": "integer"}}, "$ref": "#/$defs/n"}), Style::Form), int);
        assert_eq!(shape(json!({"allOf": [{"type": "integer"}, {"minimum": 1}]}), Style::Form), int);
        assert_eq!(
            shape(json!({"anyOf": [{"type": "integer"}, {"type": "boolean"}]}), Style::Form),
            Shape::Primitive(Types(Types::INTEGER | Types::BOOLEAN))
        );
        assert_eq!(shape(json!({"anyOf": [{"type": "integer"}, {}]}), Style::Form), Shape::Primitive(Types::default()));
        assert_eq!(shape(json!({"enum": [1, 2]}), Style::Form), Shape::Primitive(Types(Types::INTEGER | Types::NUMBER)));
        assert_eq!(shape(json!({"type": "array", "items": {"type": "number"}}), Style::Form), Shape::Array(Types(Types::NUMBER)));
        let looped = json!({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"});
        assert_eq!(shape(looped, Style::Form), Shape::Primitive(Types::default()), "a $ref loop ends");
    }

    #[test]
    fn coercion_keeps_what_does_not_parse() {
        let t = |bits| Types(bits);
        assert_eq!(coerce("12", t(Types::INTEGER)), json!(12));
        assert_eq!(coerce("1.5", t(Types::NUMBER)), json!(1.5));
        assert_eq!(coerce("+1", t(Types::INTEGER)), json!("+1"));
        assert_eq!(coerce(" 1", t(Types::INTEGER)), json!(" 1"));
        assert_eq!(coerce("1e999", t(Types::NUMBER)), json!("1e999"));
        assert_eq!(coerce("true", t(Types::BOOLEAN)), json!(true));
        assert_eq!(coerce("True", t(Types::BOOLEAN)), json!("True"));
        assert_eq!(coerce("null", t(Types::NULL | Types::INTEGER)), Value::Null);
        assert_eq!(coerce("12", t(Types::STRING)), json!("12"));
        assert_eq!(coerce("12", Types::default()), json!("12"));
    }

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
