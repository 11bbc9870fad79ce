//! An OpenAPI 3.0 or 3.1 document compiled for request validation: a router over its path
//! templates, and per operation its parameters ([`ParamSet`]) and request body schemas, every
//! schema compiled once.
//!
//! ```text
//! OpenApi::from_bytes(yaml_or_json, &OpenApiOptions::default(), &path)?   // or ::compile(&value, …)
//! match api.route("POST", "/api/pets/7") {
//!     Route::Found { op, path_params } => op.params() / op.body_for(content_type),
//!     Route::UnknownPath => 404, Route::UnknownMethod { allow } => 405 + Allow,
//! }
//! ```
//!
//! # Compiling
//! 1. Text (inline string or fetched) is JSON when it starts with `{`, YAML otherwise
//!    (`serde_norway`: YAML 1.2 scalars, nesting at most 128, alias expansion bounded), at most
//!    [`MAX_DOCUMENT_BYTES`].
//! 2. `openapi` must be `3.0.x` or `3.1.x`. A 3.1 `jsonSchemaDialect` must be the OAS dialect
//!    (`https://spec.openapis.org/oas/3.1/dialect/…`) or the meta-schema of draft 2020-12,
//!    2019-09, 07, 06 or 04.
//! 3. Reference Objects (parameters, request bodies, path items) are followed inside the document,
//!    at most [`MAX_REF_HOPS`](document::MAX_REF_HOPS) in a chain. Every schema reached (component
//!    schemas, parameter and media type schemas, and whatever their `$ref`s name) is prepared once,
//!    in place: 3.0's dialect translated ([`dialect`]), `$ref`s checked and made absolute; then
//!    checked against its draft's meta-schema, so an error names its path inside the document.
//! 4. The prepared document is registered once as a `jsonschema` resource; each media type schema
//!    compiles as `{"$ref": "<doc>#/paths/~1pets/post/requestBody/content/application~1json/schema"}`,
//!    so recursive and shared schemas resolve against the whole document, and an error's schema
//!    location is a pointer into the document (`/components/schemas/Pet/properties/name/type`).
//!    Parameter schemas compile the same way through [`ParamSet::compile_with_refs`].
//! 5. `format` is asserted unless `format_assertions: false`; a format the validator does not know
//!    (OpenAPI's `int32`, `int64`, `float`, `double`, `byte`, `binary`, `password`, or a custom one)
//!    is an annotation: OpenAPI lets tools that do not know a format fall back to the type.
//!
//! Bounds: [`MAX_DOCUMENT_BYTES`] (4 MiB) of text, [`MAX_PATHS`](document::MAX_PATHS) (2,000)
//! paths, [`MAX_OPERATIONS`](document::MAX_OPERATIONS) (4,000) operations, [`MAX_SCHEMAS`]
//! (10,000) schemas prepared, Reference Object chains of [`MAX_REF_HOPS`](document::MAX_REF_HOPS)
//! (32); schemas applying in place of each other ([`crate::refs`], shared with the plain form):
//! no cycle, at most [`MAX_IN_PLACE_REFS`] (4) `$ref`s and [`MAX_IN_PLACE_DEPTH`] (9) steps in a
//! chain, no `$dynamicRef`/`$recursiveRef`. A document over a bound is refused before (paths,
//! text) or while (schemas) it compiles.
//!
//! # Measured (2026-12-03, the shared 2-core machine, debug build of `tests/openapi.rs`)
//! - The example API (`deploy/policies/openapi/orders-api.yaml`, 8.7 KB, 11 operations): compiled
//!   in 15–42 ms; the compiled document keeps 115 KB of heap, 343 KB more at the peak of
//!   compiling (counted with a counting allocator in a throwaway test, statics warmed first: the
//!   committed test crate has no `unsafe`). Its 3.0 twin (2 operations): 11 ms, 28 KB kept.
//! - 2,000 paths, each with a path parameter, a GET and a POST whose body is a shared component:
//!   0.6–0.9 s, 5.7 MB kept, 34 MB peak (GET only: 3.7 / 17 MB; no parameters: 2.9 / 9 MB). In a
//!   Wasm VM the peak stays as linear memory (it never shrinks): the bounds are the lever.
//! - 2,000 paths × 2 operations: 150–410 ms. 10,000 paths: refused (bound) before compiling;
//!   10,001 component schemas: refused after 0.34 s (each is meta-checked until the bound).
//! - A chain of 2,000 component schemas, each `properties.a` a `$ref` to the next: 0.3–1.4 s
//!   (jsonschema compiles `$ref` targets from a work list); validating it goes as deep as the body.
//!   A chain of 5,000 schemas each `allOf` the next overflowed the 2 MiB native test stack while
//!   validating, hence the in-place bounds; their figures are measured in the Wasm module
//!   ([`crate::refs`]).
//! - YAML alias bomb (9^7 nodes): refused by serde_norway's repetition limit in 0.16–0.58 s;
//!   10,000 nested `[`: refused at depth 128.
//! - Module size: serde_norway adds ~169 KB and matchit ~39 KB to a wasm32-wasip1 release cdylib
//!   (throwaway crate with the workspace profile: 53,780 B with serde_json alone, 222,725 B with
//!   YAML, 92,430 B with the router). The `yaml` feature (default on) can leave YAML out.
//!
//! Why one registered document rather than one schema per operation with its components copied
//! in: every `$ref` (recursive, shared, chained) resolves against the same resource with no
//! copying or bundling, and an error's schema location is the pointer a reader finds in the
//! document. A media type or parameter schema that is a bare `$ref` (or the same inline schema
//! again) compiles once and is shared by every operation naming it (example API: 147 KB kept
//! before this sharing, 115 KB after); a validator does not share the compiled components it
//! reaches with another validator.
//!
//! # Routing
//! The request path (without query) has the base path removed (`base_path`, default the path of
//! `servers[0].url` with its variables' defaults), then is routed ([`router`]: concrete paths
//! before templates, canonical percent-encoding, trailing slash significant). Methods: `get put
//! post delete options head patch trace` (a request's method is upper case; `HEAD` is not `GET`).
//! Path-level parameters apply to every operation of the path unless the operation has one of the
//! same `name` and `in`.
//!
//! # Request bodies
//! A `requestBody`'s `content` keys are media ranges; the one that is most specific among those
//! matching the request's `content-type` is chosen (`application/json` over `application/*` over
//! `*/*`; equal ones: the first). A JSON key (`application/json`, `application/…+json`, including
//! the range `application/*+json`) with a schema has the body parsed and validated. Any other key
//! (`text/plain`, `application/*`, `*/*`, `multipart/form-data`): the content type is checked,
//! the body is not parsed. No key matches: 415. `required` defaults to `false` (OpenAPI).

mod dialect;
mod document;
pub(crate) mod pointer;
mod router;
mod rule;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use jsonschema::{Draft, PatternOptions, Registry};
use serde_json::Value;

use gatewarden_policy::error::{quote, ConfigError, FieldPath};

use crate::media::{MediaRange, MediaType};
use crate::params::ParamSet;
use crate::schema::{draft_name, draft_of, excerpt, BodySchema, REGEX_SIZE_LIMIT};

pub use dialect::Dialect;
pub use document::{MAX_OPERATIONS, MAX_PATHS, MAX_REF_HOPS};
pub(crate) use rule::OpenApiRule;
pub use rule::{RemoteDocument, OPENAPI_DOCUMENT};

use dialect::{FoundRef, SchemaPass};
use pointer::{field_path, field_path_below, get, Loc, Tok};
use router::PathRouter;

/// The largest document text accepted (inline or fetched).
pub const MAX_DOCUMENT_BYTES: usize = 4 << 20;
/// The most distinct schemas prepared for one document (component schemas, parameter and media
/// type schemas, and the places their `$ref`s name).
pub const MAX_SCHEMAS: usize = 10_000;
/// Chains of schemas applying in place of each other are bounded by [`crate::refs`], the same
/// check as a plain rule's `body_schema`.
pub use crate::refs::{MAX_IN_PLACE_DEPTH, MAX_IN_PLACE_REFS};

/// How a document is compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenApiOptions {
    /// Whether `format` is asserted (default `true`).
    pub format_assertions: bool,
    /// The prefix removed before routing; `None`: the path of `servers[0].url`.
    pub base_path: Option<String>,
}

impl Default for OpenApiOptions {
    fn default() -> Self {
        Self { format_assertions: true, base_path: None }
    }
}

/// A compiled OpenAPI document.
pub struct OpenApi {
    dialect: Dialect,
    base_path: String,
    router: PathRouter,
    paths: Vec<PathItem>,
    operations: Vec<Operation>,
}

impl fmt::Debug for OpenApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenApi")
            .field("dialect", &self.dialect)
            .field("base_path", &self.base_path)
            .field("paths", &self.paths.len())
            .field("operations", &self.operations.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct PathItem {
    /// Per method of [`document::METHODS`], the operation's index.
    operations: [Option<usize>; 8],
    /// The `Allow` value of a 405: the path's methods, upper case.
    allow: Arc<str>,
}

/// One operation: its parameters and request body.
#[derive(Debug)]
pub struct Operation {
    method: &'static str,
    template: Arc<str>,
    operation_id: Option<String>,
    params: ParamSet,
    body: Option<RequestBody>,
}

/// A `requestBody`.
#[derive(Debug)]
pub struct RequestBody {
    /// Whether a request must have a body (OpenAPI default `false`).
    pub required: bool,
    media: Vec<MediaEntry>,
}

/// One `content` entry of a request body.
#[derive(Debug)]
pub struct MediaEntry {
    key: String,
    range: MediaRange,
    /// The compiled schema of a JSON entry; `None`: the body is not parsed.
    schema: Option<Arc<BodySchema>>,
}

impl MediaEntry {
    /// The `content` key as written.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The schema the body is validated against (a JSON media type with a schema).
    pub fn schema(&self) -> Option<&Arc<BodySchema>> {
        self.schema.as_ref()
    }
}

/// Where a request goes in the document.
#[derive(Debug)]
pub enum Route<'a> {
    /// An operation; path template values by name, percent-decoded.
    Found { op: &'a Operation, path_params: Vec<(String, String)> },
    /// No path matches (or the base path does not).
    UnknownPath,
    /// The path exists without this method; `allow` lists its methods (`GET, POST`).
    UnknownMethod { allow: &'a Arc<str> },
}

/// The media entry chosen for a request's content type.
#[derive(Debug)]
pub enum BodyChoice<'a> {
    /// The operation has no `requestBody`: the body is not read.
    NotDescribed,
    /// The most specific entry matching the content type.
    Media(&'a RequestBody, &'a MediaEntry),
    /// The request has no `content-type`.
    NoContentType(&'a RequestBody),
    /// No entry matches (or the content type is malformed): 415.
    Unsupported(&'a RequestBody),
}

impl Operation {
    /// The method, upper case.
    pub fn method(&self) -> &'static str {
        self.method
    }

    /// The `paths` key it is under.
    pub fn template(&self) -> &str {
        &self.template
    }

    pub fn operation_id(&self) -> Option<&str> {
        self.operation_id.as_deref()
    }

    /// The compiled parameters (path level merged in).
    pub fn params(&self) -> &ParamSet {
        &self.params
    }

    pub fn request_body(&self) -> Option<&RequestBody> {
        self.body.as_ref()
    }

    /// The `content` entry for a request whose `content-type` is `content_type`.
    pub fn body_for(&self, content_type: Option<&str>) -> BodyChoice<'_> {
        let Some(body) = &self.body else {
            return BodyChoice::NotDescribed;
        };
        let Some(value) = content_type else {
            return BodyChoice::NoContentType(body);
        };
        let Some(media) = MediaType::parse(value) else {
            return BodyChoice::Unsupported(body);
        };
        let mut best: Option<&MediaEntry> = None;
        for entry in body.media.iter().filter(|e| e.range.matches(&media)) {
            if best.is_none_or(|b| entry.range.specificity() > b.range.specificity()) {
                best = Some(entry);
            }
        }
        match best {
            Some(entry) => BodyChoice::Media(body, entry),
            None => BodyChoice::Unsupported(body),
        }
    }
}

impl OpenApi {
    /// Compiles a document given as text (JSON or YAML), found at `path` in the policy.
    pub fn from_bytes(bytes: &[u8], opts: &OpenApiOptions, path: &FieldPath) -> Result<Self, ConfigError> {
        Self::compile(&parse_text(bytes, path)?, opts, path)
    }

    /// Compiles the document `doc` found at `path` in the policy (a string holding JSON or YAML
    /// is parsed first).
    pub fn compile(doc: &Value, opts: &OpenApiOptions, path: &FieldPath) -> Result<Self, ConfigError> {
        if let Value::String(text) = doc {
            return Self::compile(&parse_text(text.as_bytes(), path)?, opts, path);
        }
        if !doc.is_object() {
            return Err(path.error("an OpenAPI document must be an object (or a string of JSON or YAML)"));
        }
        let dialect = document::version(doc, path)?;
        let draft = schema_draft(doc, dialect, path)?;
        let structure = document::walk(doc, path)?;
        let mut prepared = doc.clone();
        prepare_schemas(&mut prepared, &structure.schema_roots, dialect, draft, path)?;
        let registry = Registry::new()
            .draft(draft)
            .add(pointer::DOC_URI, &prepared)
            .and_then(|b| b.prepare())
            .map_err(|e| path.error(format!("the document cannot be registered as a schema resource: {e}")))?;
        let compiler =
            Compiler { doc: &prepared, registry: &registry, draft, formats: opts.format_assertions, base: path, cache: RefCell::default() };

        let mut router = PathRouter::default();
        let mut paths = Vec::with_capacity(structure.paths.len());
        for (i, p) in structure.paths.iter().enumerate() {
            router.insert(&p.template, i, &field_path(path, &p.at))?;
            paths.push(PathItem { operations: [None; 8], allow: Arc::from("") });
        }
        let mut operations = Vec::with_capacity(structure.operations.len());
        let mut checked_path_params = HashSet::new();
        for (i, o) in structure.operations.iter().enumerate() {
            let p = structure.paths.get(o.path_index).ok_or_else(|| path.error("internal: operation without path"))?;
            let template: Arc<str> = Arc::from(p.template.as_str());
            let names = template_names(&p.template);
            if !p.params.is_empty() && checked_path_params.insert(o.path_index) {
                // The path item's parameters, once at their own place (errors name it exactly).
                compiler.params(&p.params, &names, &field_path(path, &key_loc(&p.at, "parameters")))?;
            }
            let params = compiler.params(&o.params, &names, &field_path(path, &key_loc(&o.at, "parameters")))?;
            let body = o.request_body.as_ref().map(|at| compiler.request_body(at)).transpose()?;
            let method = UPPER.get(o.method).copied().unwrap_or("GET");
            let operation_id = get(&prepared, &o.at).and_then(|op| op.get("operationId")).and_then(Value::as_str).map(str::to_owned);
            if let Some(item) = paths.get_mut(o.path_index) {
                if let Some(slot) = item.operations.get_mut(o.method) {
                    *slot = Some(i);
                }
            }
            operations.push(Operation { method, template, operation_id, params, body });
        }
        for item in &mut paths {
            let allow: Vec<&str> = item.operations.iter().zip(UPPER).filter(|(op, _)| op.is_some()).map(|(_, m)| m).collect();
            item.allow = Arc::from(allow.join(", "));
        }
        let base_path = match &opts.base_path {
            Some(b) => normalize_base_path(b, &path.field("base_path"))?,
            None => router::canonical(&document::server_base_path(doc)).into_owned(),
        };
        Ok(Self { dialect, base_path, router, paths, operations })
    }

    /// Routes a request: `method` as sent (`POST`), `path` without query.
    pub fn route(&self, method: &str, path: &str) -> Route<'_> {
        let path = router::canonical(path);
        let rest = if self.base_path.is_empty() {
            path.as_ref()
        } else {
            match path.strip_prefix(self.base_path.as_str()) {
                Some(rest) if rest.starts_with('/') => rest,
                _ => return Route::UnknownPath,
            }
        };
        let Some((index, path_params)) = self.router.at(rest) else {
            return Route::UnknownPath;
        };
        let Some(item) = self.paths.get(index) else {
            return Route::UnknownPath;
        };
        let op = UPPER.iter().position(|m| *m == method).and_then(|m| item.operations.get(m).copied().flatten());
        match op.and_then(|i| self.operations.get(i)) {
            Some(op) => Route::Found { op, path_params },
            None => Route::UnknownMethod { allow: &item.allow },
        }
    }

    /// The OpenAPI version family of the document.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The prefix removed before routing (`""`: none).
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// Every operation, in document order.
    pub fn operations(&self) -> impl Iterator<Item = &Operation> {
        self.operations.iter()
    }
}

/// The methods of [`document::METHODS`], upper case.
const UPPER: [&str; 8] = ["GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE"];

fn key_loc(loc: &[Tok], k: &str) -> Loc {
    pointer::key(loc, k)
}

/// Parses document text: JSON when it starts with `{`, YAML otherwise.
fn parse_text(bytes: &[u8], path: &FieldPath) -> Result<Value, ConfigError> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(path.error(format!("the document is {} bytes: at most {MAX_DOCUMENT_BYTES} are accepted", bytes.len())));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| path.error(format!("the document is not UTF-8: {e}")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| path.error(format!("the document is not valid JSON: {e}")))
    } else {
        parse_yaml(text, path)
    }
}

#[cfg(feature = "yaml")]
fn parse_yaml(text: &str, path: &FieldPath) -> Result<Value, ConfigError> {
    serde_norway::from_str(text).map_err(|e| path.error(format!("the document is not valid YAML: {e}")))
}

#[cfg(not(feature = "yaml"))]
fn parse_yaml(_: &str, path: &FieldPath) -> Result<Value, ConfigError> {
    Err(path.error("the document is not JSON, and this build reads no YAML (feature `yaml`): give it as JSON"))
}

/// The draft the document's schemas are compiled as.
fn schema_draft(doc: &Value, dialect: Dialect, path: &FieldPath) -> Result<Draft, ConfigError> {
    const OAS_DIALECT: &str = "https://spec.openapis.org/oas/3.1/dialect/";
    match (dialect, doc.get("jsonSchemaDialect")) {
        (_, None) => Ok(Draft::Draft202012),
        (Dialect::Oas30, Some(_)) => Err(path.field("jsonSchemaDialect").error("jsonSchemaDialect is an OpenAPI 3.1 field")),
        (Dialect::Oas31, Some(Value::String(uri))) if uri.starts_with(OAS_DIALECT) => Ok(Draft::Draft202012),
        (Dialect::Oas31, Some(Value::String(uri))) => draft_of(uri).ok_or_else(|| {
            path.field("jsonSchemaDialect").error(format!(
                "unsupported dialect {}: use the OAS 3.1 dialect or the meta-schema URI of 2020-12, 2019-09, draft-07, draft-06 or draft-04",
                quote(uri)
            ))
        }),
        (Dialect::Oas31, Some(other)) => Err(path.field("jsonSchemaDialect").error(format!("must be a URI string, got {}", quote(&other.to_string())))),
    }
}

/// Prepares every schema reached from `roots` (and from their `$ref`s), each once.
fn prepare_schemas(doc: &mut Value, roots: &[Loc], dialect: Dialect, draft: Draft, base: &FieldPath) -> Result<(), ConfigError> {
    let read_only = read_only_components(doc);
    let meta = meta_validator(draft);
    let mut done: HashSet<String> = HashSet::new();
    let mut queue: std::collections::VecDeque<Loc> = roots.iter().cloned().collect();
    while let Some(root) = queue.pop_front() {
        if (0..=root.len()).any(|n| done.contains(&pointer::pointer(root.get(..n).unwrap_or_default()))) {
            continue;
        }
        let mut pass = SchemaPass { dialect, base, read_only: &read_only, refs: Vec::new() };
        let Some(node) = pointer::get_mut(doc, &root) else { continue };
        let mut loc = root.clone();
        pass.schema(node, &mut loc, 0)?;
        if let Err(e) = meta.validate(node) {
            let at = field_path_below(base, Some(node), &root, e.instance_path().as_str());
            return Err(at.error(format!("not a valid {} schema: {}", draft_name(draft), excerpt(&e.to_string(), 200))));
        }
        done.insert(pointer::pointer(&root));
        if done.len() > MAX_SCHEMAS {
            return Err(base.error(format!("more than {MAX_SCHEMAS} schemas: not supported")));
        }
        for FoundRef { target, at, raw } in pass.refs {
            let Some(target_loc) = pointer::locate(doc, &target) else {
                return Err(field_path(base, &at).error(format!("$ref {} names nothing in the document", quote(&raw))));
            };
            queue.push_back(target_loc);
        }
    }
    let resolve = |r: &str| dialect::parse_local_ref(r).map_err(str::to_owned);
    crate::refs::check_in_place(doc, roots, &crate::refs::Resolve::Document(&resolve), base)
}

/// 3.0: the absolute references of component schemas that are `readOnly: true`.
fn read_only_components(doc: &Value) -> HashSet<String> {
    let Some(Value::Object(schemas)) = doc.get("components").and_then(|c| c.get("schemas")) else {
        return HashSet::new();
    };
    schemas
        .iter()
        .filter(|(_, s)| s.get("readOnly") == Some(&Value::Bool(true)))
        .map(|(name, _)| pointer::doc_ref(&[Tok::Key("components".into()), Tok::Key("schemas".into()), Tok::Key(name.clone())]))
        .collect()
}

fn meta_validator(draft: Draft) -> jsonschema::meta::MetaValidator<'static> {
    match draft {
        Draft::Draft4 => jsonschema::draft4::meta::validator(),
        Draft::Draft6 => jsonschema::draft6::meta::validator(),
        Draft::Draft7 => jsonschema::draft7::meta::validator(),
        Draft::Draft201909 => jsonschema::draft201909::meta::validator(),
        _ => jsonschema::draft202012::meta::validator(),
    }
}

/// The parameter names of a path template (`/pets/{id}` → `["id"]`).
fn template_names(template: &str) -> Vec<&str> {
    template.split('{').skip(1).filter_map(|s| s.split_once('}').map(|(name, _)| name)).collect()
}

/// `base_path` as given: `/` alone or a path starting with `/`; a trailing `/` is dropped.
fn normalize_base_path(b: &str, at: &FieldPath) -> Result<String, ConfigError> {
    if !b.starts_with('/') || b.contains(['?', '#']) {
        return Err(at.error(format!("a base path starts with \"/\" and has no query, got {}", quote(b))));
    }
    Ok(router::canonical(b.trim_end_matches('/')).into_owned())
}

/// Compiles schemas against the registered document.
struct Compiler<'a> {
    doc: &'a Value,
    registry: &'a Registry<'a>,
    draft: Draft,
    formats: bool,
    base: &'a FieldPath,
    /// Compiled schemas by their JSON text: operations that name the same component (or repeat
    /// an identical inline schema) share one validator. Safe because every `$ref` is absolute.
    cache: RefCell<HashMap<String, Arc<BodySchema>>>,
}

impl Compiler<'_> {
    /// Compiles `schema` (a schema of the document, or a `$ref` to one) reported at `loc` / `at`.
    fn schema(&self, schema: &Value, loc: Option<&[Tok]>, at: &FieldPath) -> Result<Arc<BodySchema>, ConfigError> {
        let key = schema.to_string();
        if let Some(found) = self.cache.borrow().get(&key) {
            return Ok(found.clone());
        }
        let compiled = self.compile(schema, loc, at)?;
        self.cache.borrow_mut().insert(key, compiled.clone());
        Ok(compiled)
    }

    fn compile(&self, schema: &Value, loc: Option<&[Tok]>, at: &FieldPath) -> Result<Arc<BodySchema>, ConfigError> {
        let patterns = PatternOptions::regex().size_limit(REGEX_SIZE_LIMIT);
        let validator = jsonschema::options()
            .with_draft(self.draft)
            .with_registry(self.registry)
            .should_validate_formats(self.formats)
            .should_ignore_unknown_formats(true)
            .with_pattern_options(patterns)
            .build(schema)
            .map_err(|e| {
                // A schema error after the meta-schema check (a `pattern` the regex engine
                // refuses): its location is a pointer into the document when it can be found.
                let message = excerpt(&e.to_string(), 200);
                let ptr = e.schema_path().as_str().to_owned();
                let place = match pointer::locate(self.doc, &pointer::split_pointer(&ptr)) {
                    Some(found) if !ptr.is_empty() => field_path(self.base, &found),
                    _ => match loc {
                        Some(loc) => field_path_below(self.base, get(self.doc, loc), loc, e.instance_path().as_str()),
                        None => at.clone(),
                    },
                };
                place.error(format!("the {} schema does not compile: {message}", draft_name(self.draft)))
            })?;
        Ok(Arc::new(BodySchema::from_validator(validator, self.draft)))
    }

    /// The parameters at `locs` as one set (errors at `at[i]`).
    fn params(&self, locs: &[Loc], names: &[&str], at: &FieldPath) -> Result<ParamSet, ConfigError> {
        let values: Vec<Value> = locs.iter().map(|l| get(self.doc, l).cloned().unwrap_or(Value::Null)).collect();
        let compile = |s: &Value, p: &FieldPath| self.schema(s, None, p);
        let resolve = |_: &Value, r: &str| -> Option<Value> {
            let tokens = dialect::parse_local_ref(r).ok()?;
            self.doc.pointer(&dialect::join(&tokens)).cloned()
        };
        ParamSet::compile_with_refs(&values, names, &compile, &resolve, at)
    }

    /// The request body at `loc`.
    fn request_body(&self, loc: &Loc) -> Result<RequestBody, ConfigError> {
        let at = field_path(self.base, loc);
        let body = get(self.doc, loc);
        let required = match body.and_then(|b| b.get("required")) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(at.field("required").error(format!("must be true or false, got {}", quote(&other.to_string())))),
        };
        let mut media = Vec::new();
        if let Some(Value::Object(content)) = body.and_then(|b| b.get("content")) {
            let content_loc = key_loc(loc, "content");
            for (k, entry) in content {
                let entry_loc = key_loc(&content_loc, k);
                let range = MediaRange::parse(k).ok_or_else(|| {
                    field_path(self.base, &entry_loc)
                        .error(format!("invalid media range {}: use type/subtype, type/*, */* or type/*+suffix", quote(k)))
                })?;
                let schema = match entry.get("schema") {
                    Some(_) if is_json_key(k) => {
                        let schema_loc = key_loc(&entry_loc, "schema");
                        // A bare `$ref` compiles as itself (shared with every operation naming
                        // the same schema); anything else through a `$ref` to its place.
                        let wrapper = match get(self.doc, &schema_loc) {
                            Some(Value::Object(m)) if m.len() == 1 && m.get("$ref").is_some_and(Value::is_string) => {
                                Value::Object(m.clone())
                            }
                            _ => serde_json::json!({ "$ref": pointer::doc_ref(&schema_loc) }),
                        };
                        Some(self.schema(&wrapper, Some(&schema_loc), &field_path(self.base, &schema_loc))?)
                    }
                    _ => None,
                };
                media.push(MediaEntry { key: k.clone(), range, schema });
            }
        }
        Ok(RequestBody { required, media })
    }
}

/// Whether a `content` key is JSON: `application/json` or a `+json` subtype (also the range
/// `application/*+json`).
fn is_json_key(k: &str) -> bool {
    let essence = k.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", sub)) => sub == "json" || sub.ends_with("+json"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keys() {
        for k in ["application/json", "application/vnd.api+json", "application/*+json", "Application/JSON; charset=utf-8"] {
            assert!(is_json_key(k), "{k}");
        }
        for k in ["application/*", "*/*", "text/plain", "application/jsonl", "text/json"] {
            assert!(!is_json_key(k), "{k}");
        }
    }

    #[test]
    fn template_names_in_order() {
        assert_eq!(template_names("/a/{x}/b/{y}.json"), ["x", "y"]);
        assert!(template_names("/a").is_empty());
    }
}
