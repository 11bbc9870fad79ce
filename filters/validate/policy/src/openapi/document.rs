//! The structure of an OpenAPI document: its version, paths, operations, Reference Objects
//! (followed inside the document), and where its schemas are. Read-only: it finds locations;
//! [`super::dialect`] prepares the schemas there.

use serde_json::{Map, Value};

use gatewarden_policy::error::{quote, ConfigError, FieldPath};

use super::dialect::{parse_local_ref, Dialect};
use super::pointer::{self, field_path, get, key, Loc};

/// The methods an OpenAPI Path Item may hold, in the order `Allow` lists them.
pub(crate) const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// Longest chain of Reference Objects followed (`$ref` to a `$ref` …); longer, or a cycle, is a
/// configuration error.
pub const MAX_REF_HOPS: usize = 32;
/// The most `paths` entries a document may have.
pub const MAX_PATHS: usize = 2_000;
/// The most operations a document may have.
pub const MAX_OPERATIONS: usize = 4_000;

/// One operation's locations.
#[derive(Debug)]
pub(crate) struct OperationLocs {
    pub(crate) path_index: usize,
    pub(crate) method: usize,
    pub(crate) at: Loc,
    /// Operation-level parameters (resolved), then the path item's that the operation does not
    /// override (same `name` and `in`).
    pub(crate) params: Vec<Loc>,
    pub(crate) request_body: Option<Loc>,
}

/// One `paths` entry.
#[derive(Debug)]
pub(crate) struct PathLocs {
    pub(crate) template: String,
    pub(crate) at: Loc,
    /// The path item's own parameters (resolved).
    pub(crate) params: Vec<Loc>,
}

/// What the structure walk found.
#[derive(Debug, Default)]
pub(crate) struct Structure {
    pub(crate) paths: Vec<PathLocs>,
    pub(crate) operations: Vec<OperationLocs>,
    /// Schemas reached from the structure: component schemas, parameter and media type schemas.
    pub(crate) schema_roots: Vec<Loc>,
}

/// The dialect of the document from its `openapi` field.
pub(crate) fn version(doc: &Value, base: &FieldPath) -> Result<Dialect, ConfigError> {
    let at = base.field("openapi");
    match doc.get("openapi") {
        Some(Value::String(v)) => {
            let mut parts = v.split('.');
            let (major, minor, patch) = (parts.next(), parts.next(), parts.next());
            let numeric = |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
            let patch_ok = patch.is_some_and(|p| {
                // 3.1.0, 3.0.3, and pre-release tags such as 3.1.0-rc1 are not accepted.
                numeric(Some(p))
            }) && parts.next().is_none();
            match (major, minor) {
                (Some("3"), Some("0")) if patch_ok => Ok(Dialect::Oas30),
                (Some("3"), Some("1")) if patch_ok => Ok(Dialect::Oas31),
                _ => Err(at.error(format!("unsupported OpenAPI version {}: 3.0.x and 3.1.x are supported", quote(v)))),
            }
        }
        Some(other) => Err(at.error(format!(
            "unsupported OpenAPI version {}: 3.0.x and 3.1.x are supported (in YAML, quote it: \"3.1.0\")",
            quote(&other.to_string())
        ))),
        None => Err(at.error("missing: an OpenAPI 3.0.x or 3.1.x document has an \"openapi\" field")),
    }
}

/// Follows Reference Objects from `loc` to the object they name.
pub(crate) fn resolve(doc: &Value, base: &FieldPath, loc: Loc) -> Result<Loc, ConfigError> {
    let mut loc = loc;
    for _ in 0..=MAX_REF_HOPS {
        let Some(Value::Object(map)) = get(doc, &loc) else {
            return Ok(loc);
        };
        let Some(r) = map.get("$ref") else {
            return Ok(loc);
        };
        let at = field_path(base, &key(&loc, "$ref"));
        let Value::String(r) = r else {
            return Err(at.error(format!("$ref must be a string, got {}", quote(&r.to_string()))));
        };
        let tokens = parse_local_ref(r).map_err(|why| at.error(format!("$ref {}: {why}", quote(r))))?;
        loc = pointer::locate(doc, &tokens).ok_or_else(|| at.error(format!("$ref {} names nothing in the document", quote(r))))?;
    }
    Err(field_path(base, &loc).error(format!("a chain of more than {MAX_REF_HOPS} $refs, or a cycle")))
}

/// Walks `paths` and `components.schemas`.
pub(crate) fn walk(doc: &Value, base: &FieldPath) -> Result<Structure, ConfigError> {
    let mut s = Structure::default();
    if let Some(schemas) = doc.get("components").and_then(|c| c.get("schemas")) {
        let at = vec![pointer::Tok::Key("components".into()), pointer::Tok::Key("schemas".into())];
        let Value::Object(schemas) = schemas else {
            return Err(field_path(base, &at).error("must be an object of schemas"));
        };
        s.schema_roots.extend(schemas.keys().map(|name| key(&at, name)));
    }
    let paths = match doc.get("paths") {
        None => return Ok(s),
        Some(Value::Object(paths)) => paths,
        Some(other) => return Err(base.field("paths").error(format!("must be an object, got {}", quote(&other.to_string())))),
    };
    if paths.len() > MAX_PATHS {
        return Err(base.field("paths").error(format!("{} paths: at most {MAX_PATHS} are supported", paths.len())));
    }
    let paths_at = vec![pointer::Tok::Key("paths".into())];
    for (template, _) in paths.iter().filter(|(k, _)| !k.starts_with("x-")) {
        let entry_at = key(&paths_at, template);
        let item_at = resolve(doc, base, entry_at.clone())?;
        let Some(Value::Object(item)) = get(doc, &item_at) else {
            return Err(field_path(base, &entry_at).error("a Path Item must be an object"));
        };
        let path_index = s.paths.len();
        let path_params = parameters(doc, base, item, &item_at, &mut s.schema_roots)?;
        for (method, name) in METHODS.iter().enumerate() {
            let Some(op) = item.get(*name) else { continue };
            let op_at = key(&item_at, name);
            let Value::Object(op) = op else {
                return Err(field_path(base, &op_at).error("an Operation must be an object"));
            };
            if s.operations.len() == MAX_OPERATIONS {
                return Err(base.field("paths").error(format!("more than {MAX_OPERATIONS} operations are not supported")));
            }
            let mut params = parameters(doc, base, op, &op_at, &mut s.schema_roots)?;
            let own_params = params.len();
            for p in &path_params {
                let id = param_id(get(doc, p));
                if !params.iter().take(own_params).any(|q| param_id(get(doc, q)) == id) {
                    params.push(p.clone());
                }
            }
            let request_body = match op.get("requestBody") {
                None => None,
                Some(_) => {
                    let body_at = resolve(doc, base, key(&op_at, "requestBody"))?;
                    media_schemas(doc, base, &body_at, true, &mut s.schema_roots)?;
                    Some(body_at)
                }
            };
            s.operations.push(OperationLocs { path_index, method, at: op_at, params, request_body });
        }
        s.paths.push(PathLocs { template: template.clone(), at: entry_at, params: path_params });
    }
    Ok(s)
}

/// `(name, in)` of a Parameter Object.
fn param_id(p: Option<&Value>) -> (Option<&str>, Option<&str>) {
    let field = |f: &str| p.and_then(|p| p.get(f)).and_then(Value::as_str);
    (field("name"), field("in"))
}

/// The resolved `parameters` of a Path Item or Operation (`holder` at `at`), recording their schemas.
fn parameters(doc: &Value, base: &FieldPath, holder: &Map<String, Value>, at: &Loc, roots: &mut Vec<Loc>) -> Result<Vec<Loc>, ConfigError> {
    let Some(list) = holder.get("parameters") else {
        return Ok(Vec::new());
    };
    let list_at = key(at, "parameters");
    let Value::Array(list) = list else {
        return Err(field_path(base, &list_at).error("must be a list of Parameter Objects"));
    };
    let mut out = Vec::with_capacity(list.len());
    for i in 0..list.len() {
        let p_at = resolve(doc, base, pointer::index(&list_at, i))?;
        if let Some(Value::Object(p)) = get(doc, &p_at) {
            if p.contains_key("schema") {
                roots.push(key(&p_at, "schema"));
            }
        }
        media_schemas(doc, base, &p_at, false, roots)?;
        out.push(p_at);
    }
    Ok(out)
}

/// Records the schemas of `content` of the object at `at` (a Request Body or a Parameter).
fn media_schemas(doc: &Value, base: &FieldPath, at: &Loc, body: bool, roots: &mut Vec<Loc>) -> Result<(), ConfigError> {
    let content_at = key(at, "content");
    match get(doc, &content_at) {
        None if body => Err(field_path(base, at).error("a Request Body needs \"content\"")),
        None => Ok(()),
        Some(Value::Object(content)) => {
            for (media, m) in content {
                if m.get("schema").is_some() {
                    roots.push(key(&key(&content_at, media), "schema"));
                }
            }
            Ok(())
        }
        Some(_) => Err(field_path(base, &content_at).error("must be an object of media types")),
    }
}

/// The path of the first `servers[].url` (server variables replaced by their defaults), without
/// a trailing `/`; empty when there is none or it has no path.
pub(crate) fn server_base_path(doc: &Value) -> String {
    let Some(server) = doc.get("servers").and_then(|s| s.get(0)) else {
        return String::new();
    };
    let Some(url) = server.get("url").and_then(Value::as_str) else {
        return String::new();
    };
    let mut url = url.to_owned();
    if let Some(Value::Object(vars)) = server.get("variables") {
        for (name, var) in vars {
            if let Some(default) = var.get("default").and_then(Value::as_str) {
                url = url.replace(&format!("{{{name}}}"), default);
            }
        }
    }
    let path = match url.find("://") {
        Some(scheme_end) => {
            let after = url.get(scheme_end + 3..).unwrap_or("");
            after.find('/').and_then(|i| after.get(i..)).unwrap_or("")
        }
        None if url.starts_with("//") => {
            let after = url.get(2..).unwrap_or("");
            after.find('/').and_then(|i| after.get(i..)).unwrap_or("")
        }
        None => url.as_str(),
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = path.trim_end_matches('/');
    if path.is_empty() || path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}
