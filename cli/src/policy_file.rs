//! Reading a policy file (YAML or JSON) and compiling it with the filter's own code.

use std::fmt;

use gatewarden_ip_geo_policy::IpGeoPolicy;
use gatewarden_jwt_policy::JwtPolicy;
use gatewarden_policy::{compile, ConfigError, FilterPolicy};
use gatewarden_rate_limit_policy::RateLimitPolicy;
use gatewarden_validate_policy::ValidatePolicy;

/// The filters the CLI knows. Adding one is a line here and one in each `match`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    IpGeo,
    Jwt,
    RateLimit,
    Validate,
}

impl Filter {
    pub const ALL: [Filter; 4] = [Filter::IpGeo, Filter::Jwt, Filter::RateLimit, Filter::Validate];

    pub fn name(self) -> &'static str {
        match self {
            Filter::IpGeo => IpGeoPolicy::NAME,
            Filter::Jwt => JwtPolicy::NAME,
            Filter::RateLimit => RateLimitPolicy::NAME,
            Filter::Validate => ValidatePolicy::NAME,
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Compiles `json` as this filter's policy: the code `on_configure` runs.
    pub fn check(self, json: &[u8]) -> Result<String, ConfigError> {
        match self {
            Filter::IpGeo => compile::<IpGeoPolicy>(json).map(|p| p.header().policy_version.to_string()),
            Filter::Jwt => compile::<JwtPolicy>(json).map(|p| p.header().policy_version.to_string()),
            Filter::RateLimit => compile::<RateLimitPolicy>(json).map(|p| p.header().policy_version.to_string()),
            Filter::Validate => compile::<ValidatePolicy>(json).map(|p| p.header().policy_version.to_string()),
        }
    }

    pub fn schema(self) -> serde_json::Value {
        match self {
            Filter::IpGeo => gatewarden_policy::schema::of::<gatewarden_ip_geo_policy::IpGeoDocument>(),
            Filter::Jwt => gatewarden_policy::schema::of::<gatewarden_jwt_policy::JwtDocument>(),
            Filter::RateLimit => gatewarden_policy::schema::of::<gatewarden_rate_limit_policy::RateLimitDocument>(),
            Filter::Validate => gatewarden_policy::schema::of::<gatewarden_validate_policy::ValidateDocument>(),
        }
    }

    /// The release module's file name: `gatewarden_<name>.wasm` (package `gatewarden-<name>`).
    pub fn module_file(self) -> String {
        format!("gatewarden_{}.wasm", self.name())
    }

    /// Root id and VM id the shipped configs use: `gatewarden_<name>`.
    pub fn root_id(self) -> String {
        format!("gatewarden_{}", self.name())
    }

    /// The decision header the glue sends upstream: `x-gatewarden-<name>` (dashes).
    pub fn decision_header(self) -> String {
        format!("x-gatewarden-{}", self.name().replace('_', "-"))
    }
}

/// A valid policy file.
pub struct LoadedPolicy {
    pub filter: Filter,
    pub policy_version: String,
    /// The compact JSON the filter receives.
    pub json: String,
}

/// Why a file was not accepted.
#[derive(Debug)]
pub enum LoadError {
    /// Could not run: unreadable file.
    Io(String),
    /// Invalid: not YAML/JSON at all.
    Syntax(String),
    /// Invalid: the filter cannot be told.
    UnknownFilter(String),
    /// Invalid: the filter refuses it.
    Config(ConfigError),
}

impl LoadError {
    /// Invalid policy (exit 1) rather than could-not-run (exit 2).
    pub fn is_invalid(&self) -> bool {
        !matches!(self, LoadError::Io(_))
    }

    /// The JSON path of the bad field, when known.
    pub fn field(&self) -> Option<&str> {
        match self {
            LoadError::Config(e) => Some(e.path()),
            _ => None,
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Io(m) | LoadError::Syntax(m) | LoadError::UnknownFilter(m) => f.write_str(m),
            LoadError::Config(e) => write!(f, "{e}"),
        }
    }
}

/// Reads `path` (YAML or JSON; JSON is YAML), turns it into JSON, and compiles it for the
/// filter named by `--filter` or by the document's `filter` field.
pub fn load(path: &str, filter: Option<Filter>) -> Result<LoadedPolicy, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::Io(format!("cannot read: {e}")))?;
    load_text(path, &text, filter)
}

/// [`load`] for text already read; `path` tells JSON (`.json`) from YAML, and the files the
/// policy names are read relative to its directory.
pub fn load_text(path: &str, text: &str, filter: Option<Filter>) -> Result<LoadedPolicy, LoadError> {
    let value: serde_json::Value = if path.ends_with(".json") {
        serde_json::from_str(text).map_err(|e| LoadError::Syntax(format!("not valid JSON: {e}")))?
    } else {
        serde_norway::from_str(text).map_err(|e| LoadError::Syntax(format!("not valid YAML: {e}")))?
    };
    load_value(path, value, filter)
}

/// [`load`] for a document already parsed; `path` is the policy file's (the files it names
/// are read relative to its directory, [`crate::include`]).
pub fn load_value(path: &str, mut value: serde_json::Value, filter: Option<Filter>) -> Result<LoadedPolicy, LoadError> {
    let named = value.get("filter").and_then(|f| f.as_str());
    let filter = match (filter, named) {
        (Some(f), _) => f,
        (None, Some(name)) => {
            Filter::from_name(name).ok_or_else(|| LoadError::UnknownFilter(format!("filter: unknown filter {name:?}")))?
        }
        (None, None) => {
            return Err(LoadError::UnknownFilter("filter: missing; add `filter: <name>` to the policy or pass --filter".into()))
        }
    };
    if filter == Filter::Validate {
        let base = std::path::Path::new(path).parent().unwrap_or(std::path::Path::new(""));
        crate::include::inline_files(&mut value, base)?;
    }
    let json = serde_json::to_string(&value).map_err(|e| LoadError::Syntax(e.to_string()))?;
    let policy_version = filter.check(json.as_bytes()).map_err(LoadError::Config)?;
    Ok(LoadedPolicy { filter, policy_version, json })
}
