//! The remote source: one config type and validator for "fetch this resource from an upstream"
//! (the IP/geo filter's country database, the JWT filter's remote JWKS, and whatever comes next).
//!
//! ```text
//! RemoteSourceSpec (policy JSON) ─ RemoteSource::compile(spec, path, &KIND) ─▶ RemoteSource
//!   cluster / host:port, authority, path, timeout, refresh and retry periods, size limit,
//!   failure mode, early-refetch interval — every check applies to every resource
//! ```
//! The glue's `gatewarden_glue::remote::RemoteResource` does the rest: one fetch per process
//! shared by all workers, publication in shared data, per-VM load and generations ([`schedule`]).
//! A resource kind ([`ResourceKind`]) gives only what differs between resources: the defaults
//! and the largest size allowed.

pub mod schedule;

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::document::FailureMode;
use crate::error::{quote, ConfigError, FieldPath};
pub use schedule::{RefreshSchedule, SharedMeta};

/// Where a resource is fetched from: an HTTP GET through the proxy, once for all workers,
/// refreshed every `refresh_seconds`, retried `retry_seconds` after a failure. Defaults differ
/// by resource (geo database / JWKS): refresh 86400 / 600 s, timeout 10000 / 5000 ms,
/// max_bytes 64 MiB / 256 KiB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteSourceSpec {
    /// Envoy cluster name (Kong's engine: `host:port`) serving the resource.
    pub cluster: String,
    /// Request path, starting with `/`.
    pub path: String,
    /// `:authority` of the request (default: the cluster name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// How long a fetched copy is used before it is refetched, in seconds (minimum 10). The
    /// JWKS spelling `cache_duration_seconds` (Envoy jwt_authn's name) is accepted too.
    #[serde(default, alias = "cache_duration_seconds", skip_serializing_if = "Option::is_none")]
    pub refresh_seconds: Option<u64>,
    /// How long to wait after a failed fetch before retrying, in seconds (default 10; minimum 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_seconds: Option<u64>,
    /// Timeout of one fetch in milliseconds (1 to 60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Largest response accepted, in bytes; a larger one is refused and the last good copy kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// What requests that need the resource get while no copy is loaded: `deny` or `allow`
    /// (default: the policy's `failure_mode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<FailureMode>,
    /// Shortest interval, in seconds, between two fetches brought forward because a request
    /// needs a newer copy (a JWT whose `kid` the loaded JWKS lacks): a flood of such requests
    /// costs at most one fetch per interval across all workers (default 30; minimum 1). JWKS
    /// only; also spelled `unknown_kid_refetch_seconds`.
    #[serde(default, alias = "unknown_kid_refetch_seconds", skip_serializing_if = "Option::is_none")]
    pub early_refetch_seconds: Option<u64>,
}

/// What differs between kinds of remote resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceKind {
    /// Name in shared-data keys, counters (`<name>_fetch_failed`) and logs: `geo_db`, `jwks`.
    pub name: &'static str,
    /// What it is in a log line about a loaded copy: `geo database`, `JWKS`.
    pub label: &'static str,
    pub default_refresh_seconds: u64,
    pub default_timeout_ms: u64,
    pub default_max_bytes: u64,
    /// The largest `max_bytes` accepted.
    pub max_max_bytes: u64,
    /// Whether a request can bring a fetch forward (`early_refetch_seconds` allowed).
    pub early_refetch: bool,
}

const MIN_REFRESH_SECONDS: u64 = 10;
const DEFAULT_RETRY_SECONDS: u64 = 10;
const MAX_TIMEOUT_MS: u64 = 60_000;
const DEFAULT_EARLY_REFETCH_SECONDS: u64 = 30;
/// How long past the fetch timeout a worker's lease on a fetch lasts (a worker that died
/// mid-fetch loses it then).
const LEASE_MARGIN_MS: u64 = 2_000;

/// A validated remote source with every default applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSource {
    /// The resource kind's name (`geo_db`, `jwks`).
    pub kind: &'static str,
    /// The resource kind's label in log lines (`geo database`, `JWKS`).
    pub label: &'static str,
    /// Envoy cluster name, or `host:port` on Kong's engine.
    pub upstream: String,
    pub authority: String,
    pub path: String,
    pub timeout: Duration,
    pub max_bytes: usize,
    pub schedule: RefreshSchedule,
    /// `None`: the policy's `failure_mode` applies.
    pub failure_mode: Option<FailureMode>,
    /// Shortest interval between two fetches brought forward by requests.
    pub early_refetch: Duration,
}

impl RemoteSource {
    /// Validates `spec` (found at `path` in the document) as a source of `kind`.
    pub fn compile(spec: &RemoteSourceSpec, path: &FieldPath, kind: &ResourceKind) -> Result<Self, ConfigError> {
        check_upstream(&spec.cluster, &path.field("cluster"))?;
        if !spec.path.starts_with('/') || spec.path.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(path
                .field("path")
                .error(format!("path must start with \"/\" and hold no spaces or control characters, got {}", quote(&spec.path))));
        }
        if let Some(a) = &spec.authority {
            check_authority(a, &path.field("authority"))?;
        }
        let refresh = spec.refresh_seconds.unwrap_or(kind.default_refresh_seconds);
        if refresh < MIN_REFRESH_SECONDS {
            return Err(path.field("refresh_seconds").error(format!(
                "{refresh} is less than the minimum {MIN_REFRESH_SECONDS} (`refresh_seconds`, also spelled `cache_duration_seconds`)"
            )));
        }
        let retry = spec.retry_seconds.unwrap_or(DEFAULT_RETRY_SECONDS);
        if retry < 1 {
            return Err(path.field("retry_seconds").error("0 is less than the minimum 1"));
        }
        let timeout_ms = spec.timeout_ms.unwrap_or(kind.default_timeout_ms);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(path.field("timeout_ms").error(format!("{timeout_ms} is outside 1..={MAX_TIMEOUT_MS}")));
        }
        let max_bytes = spec.max_bytes.unwrap_or(kind.default_max_bytes);
        if !(1..=kind.max_max_bytes).contains(&max_bytes) {
            return Err(path.field("max_bytes").error(format!("{max_bytes} is outside 1..={}", kind.max_max_bytes)));
        }
        let early = match spec.early_refetch_seconds {
            Some(_) if !kind.early_refetch => {
                return Err(path.field("early_refetch_seconds").error(format!("a {} is never fetched early: remove this field", kind.name)))
            }
            Some(0) => return Err(path.field("early_refetch_seconds").error("0 is less than the minimum 1")),
            Some(s) => s,
            None => DEFAULT_EARLY_REFETCH_SECONDS,
        };
        Ok(Self {
            kind: kind.name,
            label: kind.label,
            upstream: spec.cluster.clone(),
            authority: spec.authority.clone().unwrap_or_else(|| spec.cluster.clone()),
            path: spec.path.clone(),
            timeout: Duration::from_millis(timeout_ms),
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            schedule: RefreshSchedule {
                refresh_ms: refresh.saturating_mul(1000),
                retry_ms: retry.saturating_mul(1000),
                lease_ms: timeout_ms.saturating_add(LEASE_MARGIN_MS),
            },
            failure_mode: spec.failure_mode,
            early_refetch: Duration::from_secs(early),
        })
    }

    /// Whether `other` is fetched from the same place (the same shared copy): upstream,
    /// authority and path. Schedules and limits may differ.
    pub fn same_origin(&self, other: &Self) -> bool {
        self.upstream == other.upstream && self.authority == other.authority && self.path == other.path
    }

    /// The failure mode while no copy is loaded: the source's own, else the policy's.
    pub fn failure_mode_or(&self, policy: FailureMode) -> FailureMode {
        self.failure_mode.unwrap_or(policy)
    }
}

/// Checks an upstream target at `path`: an Envoy cluster name, or `host:port` on Kong's engine
/// (not empty, no spaces or control characters). Shared by every filter that calls a service.
pub fn check_upstream(value: &str, path: &FieldPath) -> Result<(), ConfigError> {
    if value.trim().is_empty() || value.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(path.error(format!("invalid cluster {}: a cluster name or host:port without spaces is required", quote(value))));
    }
    Ok(())
}

/// Checks an `:authority` at `path` (not empty, no spaces or control characters).
pub fn check_authority(value: &str, path: &FieldPath) -> Result<(), ConfigError> {
    if value.is_empty() || value.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(path.error(format!("invalid authority {}", quote(value))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GEO: ResourceKind = ResourceKind {
        name: "geo_db",
        label: "geo database",
        default_refresh_seconds: 86_400,
        default_timeout_ms: 10_000,
        default_max_bytes: 64 << 20,
        max_max_bytes: 1 << 30,
        early_refetch: false,
    };
    const JWKS: ResourceKind = ResourceKind {
        name: "jwks",
        label: "JWKS",
        default_refresh_seconds: 600,
        default_timeout_ms: 5_000,
        default_max_bytes: 256 << 10,
        max_max_bytes: 16 << 20,
        early_refetch: true,
    };

    fn spec(v: serde_json::Value) -> RemoteSourceSpec {
        serde_json::from_value(v).unwrap()
    }

    fn err(v: serde_json::Value, kind: &ResourceKind) -> String {
        RemoteSource::compile(&spec(v), &FieldPath::root().field("src"), kind).unwrap_err().to_string()
    }

    #[test]
    fn defaults_come_from_the_kind() {
        let s = spec(json!({"cluster": "geo", "path": "/c.mmdb"}));
        let geo = RemoteSource::compile(&s, &FieldPath::root(), &GEO).unwrap();
        assert_eq!((geo.authority.as_str(), geo.timeout, geo.max_bytes), ("geo", Duration::from_millis(10_000), 64 << 20));
        assert_eq!((geo.schedule.refresh_ms, geo.schedule.retry_ms, geo.schedule.lease_ms), (86_400_000, 10_000, 12_000));
        assert_eq!(geo.failure_mode, None);
        let jwks = RemoteSource::compile(&s, &FieldPath::root(), &JWKS).unwrap();
        assert_eq!(
            (jwks.timeout, jwks.max_bytes, jwks.schedule.refresh_ms, jwks.early_refetch),
            (Duration::from_millis(5_000), 256 << 10, 600_000, Duration::from_secs(30))
        );
    }

    #[test]
    fn jwt_authn_spellings_are_accepted() {
        let s = spec(json!({"cluster": "idp", "path": "/jwks", "cache_duration_seconds": 60, "unknown_kid_refetch_seconds": 5}));
        let r = RemoteSource::compile(&s, &FieldPath::root(), &JWKS).unwrap();
        assert_eq!((r.schedule.refresh_ms, r.early_refetch), (60_000, Duration::from_secs(5)));
    }

    #[test]
    fn every_check_names_the_field_and_quotes_the_value_for_every_kind() {
        for kind in [&GEO, &JWKS] {
            let e = err(json!({"cluster": "", "path": "/x"}), kind);
            assert!(e.contains("src.cluster") && e.contains("\"\""), "{e}");
            let e = err(json!({"cluster": "a b", "path": "/x"}), kind);
            assert!(e.contains("src.cluster") && e.contains("\"a b\""), "{e}");
            let e = err(json!({"cluster": "c", "path": "x"}), kind);
            assert!(e.contains("src.path") && e.contains("\"x\""), "{e}");
            // The authority check the geo database lacked before the two copies became one.
            let e = err(json!({"cluster": "c", "path": "/x", "authority": "bad host"}), kind);
            assert!(e.contains("src.authority") && e.contains("\"bad host\""), "{e}");
            let e = err(json!({"cluster": "c", "path": "/x", "refresh_seconds": 9}), kind);
            assert!(e.contains("src.refresh_seconds") && e.contains('9'), "{e}");
            let e = err(json!({"cluster": "c", "path": "/x", "retry_seconds": 0}), kind);
            assert!(e.contains("src.retry_seconds"), "{e}");
            let e = err(json!({"cluster": "c", "path": "/x", "timeout_ms": 60_001}), kind);
            assert!(e.contains("src.timeout_ms") && e.contains("60001"), "{e}");
            let e = err(json!({"cluster": "c", "path": "/x", "max_bytes": 0}), kind);
            assert!(e.contains("src.max_bytes"), "{e}");
            let too_big = kind.max_max_bytes + 1;
            let e = err(json!({"cluster": "c", "path": "/x", "max_bytes": too_big}), kind);
            assert!(e.contains("src.max_bytes") && e.contains(&too_big.to_string()), "{e}");
        }
    }

    #[test]
    fn early_refetch_only_where_the_kind_allows_it() {
        let e = err(json!({"cluster": "c", "path": "/x", "early_refetch_seconds": 5}), &GEO);
        assert!(e.contains("src.early_refetch_seconds") && e.contains("geo_db"), "{e}");
        let e = err(json!({"cluster": "c", "path": "/x", "early_refetch_seconds": 0}), &JWKS);
        assert!(e.contains("src.early_refetch_seconds"), "{e}");
    }

    #[test]
    fn failure_mode_overrides_the_policy_s() {
        let s = spec(json!({"cluster": "c", "path": "/x", "failure_mode": "allow"}));
        let r = RemoteSource::compile(&s, &FieldPath::root(), &GEO).unwrap();
        assert_eq!(r.failure_mode_or(FailureMode::Deny), FailureMode::Allow);
        let s = spec(json!({"cluster": "c", "path": "/x"}));
        let r = RemoteSource::compile(&s, &FieldPath::root(), &GEO).unwrap();
        assert_eq!(r.failure_mode_or(FailureMode::Deny), FailureMode::Deny);
    }

    #[test]
    fn same_origin_ignores_schedule_and_limits() {
        let a = RemoteSource::compile(&spec(json!({"cluster": "c", "path": "/x"})), &FieldPath::root(), &JWKS).unwrap();
        let b =
            RemoteSource::compile(&spec(json!({"cluster": "c", "path": "/x", "refresh_seconds": 60})), &FieldPath::root(), &JWKS).unwrap();
        let c = RemoteSource::compile(&spec(json!({"cluster": "c", "path": "/y"})), &FieldPath::root(), &JWKS).unwrap();
        assert!(a.same_origin(&b) && !a.same_origin(&c));
    }
}
