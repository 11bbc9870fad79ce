//! `gatewarden test [DIR|FILE]...`: policy tests run through the built `.wasm` modules.
//!
//! A test file (`*.test.yaml`, `*.test.yml` or `*.test.json`) names one policy and lists cases:
//!
//! ```yaml
//! policy: ../policies/ip_geo.yaml      # relative to this file; validated first, as `validate` does
//! profile: envoy                       # or kong (default envoy)
//! time: 2026-01-01T00:00:00Z           # the host's clock (default 2026-01-01T00:00:00Z); a case may override
//! fixtures:                            # answers to the filter's dispatch_http_call, by upstream + path
//!   - { upstream: gatewarden_geo_db, path: /country.mmdb, file: ../fixtures/country.mmdb }
//!   - { upstream: jwks, path: /jwks.json, status: 503 }    # or `fail: true`, or `body: "..."`
//! cases:
//!   - name: office network reaches /admin
//!     request: { method: GET, path: /admin, peer: 10.1.2.3, headers: { x-forwarded-for: 10.1.2.3 },
//!                body: "...", time: 2030-01-01T00:00:00Z }
//!     expect:
//!       status: 200
//!       decision: allow                 # allow | deny | dry_run_deny | error
//!       rule: admin-office-only
//!       reason: ip_denied               # from the decision log line (denials)
//!       upstream_headers: { x-user: user-1, authorization: null }   # null: not received
//!       response_headers: { www-authenticate: 'Bearer realm="api"' }
//!       body: '{"error":"forbidden","message":"access denied by policy"}'
//! ```
//! Exit status: 0 all passed, 1 a case failed, 2 could not run (no tests, bad test file, invalid
//! policy, missing module).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use gatewarden_wasm_host::Profile;
use serde::Deserialize;

use crate::junit;
use crate::modules::{module_dir, Modules};
use crate::policy_file::{load, Filter};
use crate::run::{run_request, Actual, Fixture, FixtureSpec, RequestSpec, Setup, TimeSpec, DEFAULT_TIME};

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
    pub expect: Expect,
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
}

/// One field where the actual outcome differs from the expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub field: String,
    pub expected: String,
    pub actual: String,
}

fn shown(v: Option<&str>) -> String {
    v.map_or_else(|| "(none)".to_string(), |s| format!("{s:?}"))
}

/// Compares `actual` with `expect`: the mismatches, empty when the case passes.
pub fn compare(expect: &Expect, actual: &Actual) -> Vec<Mismatch> {
    let mut out = Vec::new();
    if let Some(s) = expect.status.filter(|s| *s != actual.status) {
        out.push(Mismatch { field: "status".into(), expected: s.to_string(), actual: actual.status.to_string() });
    }
    fn check(out: &mut Vec<Mismatch>, field: String, want: Option<&str>, got: Option<&str>) {
        if want != got {
            out.push(Mismatch { field, expected: shown(want), actual: shown(got) });
        }
    }
    if let Some(d) = &expect.decision {
        check(&mut out, "decision".into(), Some(d), Some(&actual.decision));
    }
    if let Some(r) = &expect.reason {
        check(&mut out, "reason".into(), Some(r), actual.reason.as_deref());
    }
    if let Some(r) = &expect.rule {
        if actual.rule.is_none() && actual.decision == "allow" {
            // An allowed request names its rule only in the decision header.
            out.push(Mismatch {
                field: "rule".into(),
                expected: shown(Some(r)),
                actual: "(none: an allowed request names its rule only in the decision header; is `decision_header: false` set?)"
                    .into(),
            });
        } else {
            check(&mut out, "rule".into(), Some(r), actual.rule.as_deref());
        }
    }
    for (name, want) in &expect.upstream_headers {
        let name = name.to_ascii_lowercase();
        let got = actual.upstream_received.as_ref().and_then(|h| h.get(&name)).map(String::as_str);
        check(&mut out, format!("upstream_headers.{name}"), want.as_deref(), got);
    }
    for (name, want) in &expect.response_headers {
        let name = name.to_ascii_lowercase();
        check(&mut out, format!("response_headers.{name}"), want.as_deref(), actual.response_headers.get(&name).map(String::as_str));
    }
    if let Some(b) = &expect.body {
        check(&mut out, "body".into(), Some(b), actual.body.as_deref());
    }
    out
}

/// How a case ended.
#[derive(Debug, Clone)]
pub enum Verdict {
    Pass,
    Fail(Vec<Mismatch>),
    Error(String),
}

#[derive(Debug, Clone)]
pub struct CaseReport {
    pub name: String,
    pub verdict: Verdict,
    pub actual: Option<Actual>,
    pub seconds: f64,
}

#[derive(Debug, Clone)]
pub struct FileReport {
    pub path: String,
    /// Set when the file could not run at all (then `cases` is empty).
    pub error: Option<String>,
    pub policy: Option<String>,
    pub policy_version: Option<String>,
    pub cases: Vec<CaseReport>,
    pub seconds: f64,
}

impl FileReport {
    pub fn count(&self, f: impl Fn(&Verdict) -> bool) -> usize {
        self.cases.iter().filter(|c| f(&c.verdict)).count()
    }
    pub fn failures(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Fail(_)))
    }
    pub fn errors(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Error(_))) + usize::from(self.error.is_some())
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

pub fn parse_profile(name: Option<&str>) -> Result<Profile, String> {
    match name {
        None | Some("envoy") => Ok(Profile::Envoy),
        Some("kong") => Ok(Profile::Kong),
        Some(other) => Err(format!("profile: {other:?} is not envoy or kong")),
    }
}

/// Progress on a terminal: one line rewritten in place.
struct Progress {
    on: bool,
    done: usize,
    total: usize,
}

impl Progress {
    fn show(&mut self, what: &str) {
        if self.on {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[K[{}/{}] {what}", self.done, self.total);
            let _ = err.flush();
        }
    }
    fn clear(&self) {
        if self.on {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

/// Runs one test file; its cases in order, each through a fresh VM.
fn run_file(path: &Path, modules: &mut Modules, progress: &mut Progress) -> FileReport {
    let started = Instant::now();
    let mut report = FileReport {
        path: path.display().to_string(),
        error: None,
        policy: None,
        policy_version: None,
        cases: Vec::new(),
        seconds: 0.0,
    };
    let fail = |mut r: FileReport, e: String| {
        r.error = Some(e);
        r.seconds = started.elapsed().as_secs_f64();
        r
    };
    let file = match parse_test_file(path) {
        Ok(f) => f,
        Err(e) => return fail(report, e),
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let policy_path = base.join(&file.policy);
    report.policy = Some(policy_path.display().to_string());
    let forced = match file.filter.as_deref().map(|n| Filter::from_name(n).ok_or(n)) {
        None => None,
        Some(Ok(f)) => Some(f),
        Some(Err(n)) => return fail(report, format!("filter: unknown filter {n:?}")),
    };
    let policy = match load(&policy_path.to_string_lossy(), forced) {
        Ok(p) => p,
        Err(e) => return fail(report, format!("policy {}: {e}", policy_path.display())),
    };
    report.policy_version = Some(policy.policy_version.clone());
    let profile = match parse_profile(file.profile.as_deref()) {
        Ok(p) => p,
        Err(e) => return fail(report, e),
    };
    let file_time = match file.time.as_ref().map(TimeSpec::secs).transpose() {
        Ok(t) => t.unwrap_or(DEFAULT_TIME),
        Err(e) => return fail(report, format!("time: {e}")),
    };
    let fixtures: Result<Vec<Fixture>, String> = file.fixtures.iter().map(|f| f.resolve(base)).collect();
    let fixtures = match fixtures {
        Ok(f) => f,
        Err(e) => return fail(report, e),
    };
    let module = match modules.get(policy.filter) {
        Ok(m) => &m.module,
        Err(e) => return fail(report, e),
    };
    for case in &file.cases {
        progress.show(&format!("{} › {}", report.path, case.name));
        let started = Instant::now();
        let time = case.request.time.as_ref().map(TimeSpec::secs).transpose();
        let result = time.and_then(|t| {
            let setup = Setup {
                module,
                filter: policy.filter,
                policy_json: &policy.json,
                fixtures: &fixtures,
                profile,
                time: t.unwrap_or(file_time),
            };
            run_request(&setup, &case.request)
        });
        let (verdict, actual) = match result {
            Ok(actual) => {
                let diff = compare(&case.expect, &actual);
                (if diff.is_empty() { Verdict::Pass } else { Verdict::Fail(diff) }, Some(actual))
            }
            Err(e) => (Verdict::Error(e), None),
        };
        report.cases.push(CaseReport { name: case.name.clone(), verdict, actual, seconds: started.elapsed().as_secs_f64() });
        progress.done += 1;
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// Counts the cases in the files that parse (for the progress line).
fn count_cases(files: &[PathBuf]) -> usize {
    files.iter().filter_map(|f| parse_test_file(f).ok()).map(|t| t.cases.len()).sum()
}

/// The text of one failed case's diff: `field: expected X, actual Y` lines.
pub fn format_diff(diff: &[Mismatch]) -> String {
    let width = diff.iter().map(|m| m.field.len()).max().unwrap_or(0);
    let mut out = String::new();
    for m in diff {
        out.push_str(&format!("{:width$}  - expected {}\n{:width$}  + actual   {}\n", m.field, m.expected, "", m.actual));
    }
    out
}

fn print_file(report: &FileReport) {
    let version = report.policy_version.as_deref().map(|v| format!(" (policy_version {v:?})")).unwrap_or_default();
    println!("{}{version}", report.path);
    if let Some(e) = &report.error {
        println!("  ERROR  {e}");
    }
    for c in &report.cases {
        match &c.verdict {
            Verdict::Pass => {
                let a = c.actual.as_ref();
                let rule = a.and_then(|a| a.rule.as_deref()).map(|r| format!(", rule {r}")).unwrap_or_default();
                let (status, decision) = a.map(|a| (a.status, a.decision.as_str())).unwrap_or((0, ""));
                println!("  ok     {} ({status} {decision}{rule})", c.name);
            }
            Verdict::Fail(diff) => {
                println!("  FAIL   {}", c.name);
                for line in format_diff(diff).lines() {
                    println!("         {line}");
                }
            }
            Verdict::Error(e) => println!("  ERROR  {}: {e}", c.name),
        }
    }
}

struct Options {
    paths: Vec<String>,
    modules: Option<String>,
    junit: Option<String>,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options { paths: Vec::new(), modules: None, junit: None };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--modules" => o.modules = Some(it.next().ok_or("--modules needs a directory")?.clone()),
            "--junit" => o.junit = Some(it.next().ok_or("--junit needs a file")?.clone()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            _ => o.paths.push(a.clone()),
        }
    }
    if o.paths.is_empty() {
        o.paths.push(".".into());
    }
    Ok(o)
}

/// `gatewarden test`.
pub fn main(args: &[String]) -> Result<ExitCode, String> {
    let o = parse_args(args)?;
    let started = Instant::now();
    let mut files = Vec::new();
    for p in &o.paths {
        match discover(Path::new(p)) {
            Ok(f) => files.extend(f),
            Err(e) => {
                eprintln!("gatewarden test: {e}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    if files.is_empty() {
        eprintln!("gatewarden test: no test files (*.test.yaml, *.test.yml, *.test.json) under {}", o.paths.join(", "));
        return Ok(ExitCode::from(2));
    }
    let mut modules = Modules::new(module_dir(o.modules.as_deref()));
    let mut progress = Progress { on: std::io::stderr().is_terminal(), done: 0, total: count_cases(&files) };
    let mut reports = Vec::new();
    for f in &files {
        let report = run_file(f, &mut modules, &mut progress);
        progress.clear();
        print_file(&report);
        reports.push(report);
    }
    let cases: usize = reports.iter().map(|r| r.cases.len()).sum();
    let failed: usize = reports.iter().map(FileReport::failures).sum();
    let errors: usize = reports.iter().map(FileReport::errors).sum();
    let passed = cases - failed - reports.iter().map(|r| r.count(|v| matches!(v, Verdict::Error(_)))).sum::<usize>();
    println!();
    println!("modules (the files that enforce these policies):");
    let mut any = false;
    for (name, m) in modules.loaded() {
        any = true;
        println!("  {name:8} {}  sha256:{}", m.path.display(), m.sha256);
    }
    if !any {
        println!("  (none loaded)");
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{passed} passed, {failed} failed, {errors} errors in {} files ({secs:.2} s)", reports.len());
    if let Some(path) = &o.junit {
        let xml = junit::render(&reports, secs);
        if let Err(e) = std::fs::write(path, xml) {
            eprintln!("gatewarden test: cannot write {path}: {e}");
            return Ok(ExitCode::from(2));
        }
    }
    Ok(ExitCode::from(if errors > 0 {
        2
    } else if failed > 0 {
        1
    } else {
        0
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actual() -> Actual {
        let mut a = Actual { status: 403, decision: "deny".into(), rule: Some("embargo".into()), ..Actual::default() };
        a.response_headers.insert("content-type".into(), "application/json".into());
        a
    }

    #[test]
    fn matching_expectations_pass() {
        let e = Expect { status: Some(403), rule: Some("embargo".into()), ..Expect::default() };
        assert!(compare(&e, &actual()).is_empty());
    }

    #[test]
    fn each_differing_field_is_reported_with_both_values() {
        let mut e = Expect { status: Some(200), decision: Some("allow".into()), reason: Some("x".into()), ..Expect::default() };
        e.upstream_headers.insert("X-User".into(), Some("u1".into()));
        e.response_headers.insert("content-type".into(), None);
        let d = compare(&e, &actual());
        let fields: Vec<&str> = d.iter().map(|m| m.field.as_str()).collect();
        assert_eq!(fields, ["status", "decision", "reason", "upstream_headers.x-user", "response_headers.content-type"]);
        assert_eq!(d[0], Mismatch { field: "status".into(), expected: "200".into(), actual: "403".into() });
        assert_eq!(d[2].actual, "(none)");
        assert_eq!(d[4].expected, "(none)");
    }

    #[test]
    fn an_allowed_request_without_a_rule_points_at_the_decision_header() {
        let e = Expect { rule: Some("office".into()), ..Expect::default() };
        let allowed = Actual { status: 200, decision: "allow".into(), ..Actual::default() };
        let d = compare(&e, &allowed);
        assert_eq!(d.len(), 1);
        assert!(d[0].actual.contains("decision_header: false"), "{}", d[0].actual);
        // A denial without a rule is an ordinary mismatch.
        let denied = Actual { status: 403, decision: "deny".into(), ..Actual::default() };
        assert_eq!(compare(&e, &denied)[0].actual, "(none)");
    }

    #[test]
    fn null_header_expectation_passes_when_the_upstream_lacks_it() {
        let mut e = Expect::default();
        e.upstream_headers.insert("authorization".into(), None);
        let mut a = actual();
        a.upstream_received = Some(BTreeMap::from([("x-user".to_string(), "u".to_string())]));
        assert!(compare(&e, &a).is_empty());
        a.upstream_received = Some(BTreeMap::from([("authorization".to_string(), "Bearer t".to_string())]));
        assert_eq!(compare(&e, &a).len(), 1);
    }

    #[test]
    fn diff_text_aligns_fields() {
        let d = [Mismatch { field: "status".into(), expected: "403".into(), actual: "200".into() }];
        assert_eq!(format_diff(&d), "status  - expected 403\n        + actual   200\n");
    }

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
    fn unknown_fields_in_a_case_are_errors() {
        let r: Result<Case, _> = serde_norway::from_str("name: x\nexpect: { status: 200, stauts: 1 }\n");
        assert!(r.is_err());
    }
}
