//! A test file as written (`*.test.yaml`, `*.test.yml`, `*.test.json`), and finding them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::run::{FixtureSpec, RequestSpec, TimeSpec};

/// A test file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    pub policy: String,
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub time: Option<TimeSpec>,
    #[serde(default)]
    pub fixtures: Vec<FixtureSpec>,
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub request: RequestSpec,
    /// Send the request this many times through one VM (default 1), e.g. to reach a rate limit:
    /// `expect.allowed` / `expect.denied` count them, the other fields check the last one.
    #[serde(default)]
    pub repeat: Option<u32>,
    /// With `repeat`: the host's clock advances this many milliseconds before each request after
    /// the first (default 0: all at the same instant).
    #[serde(default)]
    pub every_ms: Option<u64>,
    /// Missing is refused like `expect: {}`: a case must assert something.
    #[serde(default)]
    pub expect: Option<Expect>,
}

/// What a case expects; every field is optional, unset fields are not checked.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub status: Option<u16>,
    pub decision: Option<String>,
    pub reason: Option<String>,
    pub rule: Option<String>,
    /// Value the upstream must receive; `null`: the upstream must not receive the header.
    #[serde(default)]
    pub upstream_headers: BTreeMap<String, Option<String>>,
    /// Value the client must receive; `null`: absent.
    #[serde(default)]
    pub response_headers: BTreeMap<String, Option<String>>,
    pub body: Option<String>,
    /// How many of the case's requests reached the upstream (with `repeat`: of all of them).
    pub allowed: Option<u32>,
    /// How many were answered by the filter (a denial: local response).
    pub denied: Option<u32>,
}

impl Expect {
    /// True when no field is set: a case with this expectation passes whatever happens.
    pub fn asserts_nothing(&self) -> bool {
        let Expect { status, decision, reason, rule, upstream_headers, response_headers, body, allowed, denied } = self;
        allowed.is_none()
            && denied.is_none()
            && status.is_none()
            && decision.is_none()
            && reason.is_none()
            && rule.is_none()
            && upstream_headers.is_empty()
            && response_headers.is_empty()
            && body.is_none()
    }
}

impl Case {
    /// The expectation, or why the case is refused: one that asserts nothing cannot fail.
    pub fn expectation(&self) -> Result<&Expect, String> {
        match &self.expect {
            Some(e) if !e.asserts_nothing() => Ok(e),
            Some(_) => Err("`expect: {}` asserts nothing: a test that cannot fail".into()),
            None => Err("no `expect`: a test that cannot fail".into()),
        }
        .map_err(|why: String| {
            format!(
                "{why}; expect at least one of status, decision, rule, reason, upstream_headers, response_headers, body, allowed, denied"
            )
        })
    }
}

/// The test files under `root` (itself if it is a file), sorted; hidden dirs, `target` and
/// `node_modules` are skipped.
pub fn discover(root: &Path) -> Result<Vec<PathBuf>, String> {
    fn is_test(p: &Path) -> bool {
        let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        [".test.yaml", ".test.yml", ".test.json"].iter().any(|s| n.ends_with(s))
    }
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "node_modules" {
                    walk(&path, out)?;
                }
            } else if is_test(&path) {
                out.push(path);
            }
        }
        Ok(())
    }
    let meta = std::fs::metadata(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let mut out = Vec::new();
    if meta.is_file() {
        out.push(root.to_path_buf());
    } else {
        walk(root, &mut out)?;
    }
    out.sort();
    Ok(out)
}

/// Parses a test file (YAML or JSON).
pub fn parse_test_file(path: &Path) -> Result<TestFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| format!("not a valid test file: {e}"))
    } else {
        serde_norway::from_str(&text).map_err(|e| format!("not a valid test file: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_files_are_found_recursively_and_sorted() {
        let dir = std::env::temp_dir().join(format!("gw-discover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for f in ["b/x.test.yaml", "a.test.json", "c.yaml", ".hidden/h.test.yaml", "target/t.test.yaml"] {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap_or(&dir)).ok();
            std::fs::write(&p, "").ok();
        }
        let found: Vec<String> = discover(&dir)
            .unwrap_or_default()
            .iter()
            .map(|p| p.strip_prefix(&dir).map(|p| p.display().to_string()).unwrap_or_default())
            .collect();
        assert_eq!(found, ["a.test.json", "b/x.test.yaml"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_case_may_repeat_its_request_on_a_moving_clock() {
        let c: Result<Case, _> = serde_norway::from_str("name: x\nrepeat: 12\nevery_ms: 500\nexpect: { allowed: 10, denied: 2 }\n");
        let c = c.map_err(|e| e.to_string());
        assert!(matches!(&c, Ok(c) if c.repeat == Some(12) && c.every_ms == Some(500)), "{c:?}");
        let e = c.ok().and_then(|c| c.expect);
        assert!(matches!(e, Some(Expect { allowed: Some(10), denied: Some(2), .. })));
    }

    #[test]
    fn unknown_fields_in_a_case_are_errors() {
        let r: Result<Case, _> = serde_norway::from_str("name: x\nexpect: { status: 200, stauts: 1 }\n");
        assert!(r.is_err());
    }

    #[test]
    fn a_case_that_asserts_nothing_is_refused() {
        let case = |text: &str| serde_norway::from_str::<Case>(text).map_err(|e| e.to_string());
        let empty = case("name: x\nexpect: {}\n").and_then(|c| c.expectation().map(|_| ()));
        assert!(matches!(&empty, Err(e) if e.starts_with("`expect: {}` asserts nothing")), "{empty:?}");
        let missing = case("name: x\nrequest: { path: /a }\n").and_then(|c| c.expectation().map(|_| ()));
        assert!(matches!(&missing, Err(e) if e.starts_with("no `expect`")), "{missing:?}");
        let only_empty_maps = case("name: x\nexpect: { upstream_headers: {}, response_headers: {} }\n");
        assert!(only_empty_maps.and_then(|c| c.expectation().map(|_| ())).is_err());
        for one in [
            "status: 200",
            "decision: allow",
            "rule: r",
            "reason: r",
            "upstream_headers: { x-a: null }",
            "response_headers: { x-a: b }",
            "body: ''",
            "allowed: 0",
            "denied: 3",
        ] {
            let c = case(&format!("name: x\nexpect: {{ {one} }}\n"));
            assert!(c.and_then(|c| c.expectation().map(|_| ())).is_ok(), "{one}");
        }
    }
}
