//! `gatewarden eval --policy P [--request R.yaml] [flags]`: one request through the built module,
//! printed as JSON — the decision, status, matching rule, reason, headers set for the upstream and
//! the client, and the decision log line. The debugging tool.
//!
//! R.yaml is a request as in a test case (`method`, `path`, `authority`, `headers`, `peer`, `body`,
//! `time`), or `{ request: {...}, fixtures: [...], profile: kong, time: ... }`. Flags override it:
//! `--method M --path P --header 'name: value' --peer IP[:PORT] --body TEXT --time T`.
//! `--fixtures FILE` takes the `fixtures` of a test file (paths relative to it).
//! Exit status: 0 evaluated (whatever the decision), 1 invalid policy, 2 could not run.

use std::path::Path;
use std::process::ExitCode;

use serde::{Deserialize, Serialize};

use crate::modules::{module_dir, Modules};
use crate::policy_file::{load, Filter};
use crate::policy_test::parse_profile;
use crate::run::{run_request, Actual, Fixture, FixtureSpec, HeaderValues, RequestSpec, Setup, TimeSpec, DEFAULT_TIME};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvalFile {
    #[serde(default)]
    request: RequestSpec,
    #[serde(default)]
    fixtures: Vec<FixtureSpec>,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    time: Option<TimeSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EvalDoc {
    Full(EvalFile),
    Bare(RequestSpec),
}

#[derive(Serialize)]
struct ModuleInfo<'a> {
    path: String,
    sha256: &'a str,
}

/// The printed JSON: the verdict first, then where it came from, then the details.
#[derive(Serialize)]
struct Output<'a> {
    decision: &'a str,
    status: u16,
    rule: Option<&'a str>,
    reason: Option<&'a str>,
    policy: &'a str,
    filter: &'a str,
    policy_version: &'a str,
    module: ModuleInfo<'a>,
    #[serde(flatten)]
    actual: &'a Actual,
}

#[derive(Debug, Default)]
struct Options {
    policy: Option<String>,
    request: Option<String>,
    fixtures: Option<String>,
    modules: Option<String>,
    filter: Option<Filter>,
    profile: Option<String>,
    method: Option<String>,
    path: Option<String>,
    headers: Vec<(String, String)>,
    peer: Option<String>,
    body: Option<String>,
    time: Option<String>,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--policy" => o.policy = Some(value()?),
            "--request" => o.request = Some(value()?),
            "--fixtures" => o.fixtures = Some(value()?),
            "--modules" => o.modules = Some(value()?),
            "--filter" => {
                let n = value()?;
                o.filter = Some(Filter::parse(&n)?);
            }
            "--profile" => o.profile = Some(value()?),
            "--method" => o.method = Some(value()?),
            "--path" => o.path = Some(value()?),
            "--header" | "-H" => {
                let h = value()?;
                let (k, v) = h.split_once(':').ok_or_else(|| format!("--header {h:?}: expected 'name: value'"))?;
                o.headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
            "--peer" => o.peer = Some(value()?),
            "--body" => o.body = Some(value()?),
            "--time" => o.time = Some(value()?),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            other if o.policy.is_none() => o.policy = Some(other.to_string()),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(o)
}

fn read_yaml<T: for<'de> Deserialize<'de>>(path: &str) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: cannot read: {e}"))?;
    serde_norway::from_str(&text).map_err(|e| format!("{path}: {e}"))
}

fn fixtures_of(path: &str) -> Result<Vec<Fixture>, String> {
    #[derive(Deserialize)]
    struct HasFixtures {
        #[serde(default)]
        fixtures: Vec<FixtureSpec>,
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: cannot read: {e}"))?;
    let value: serde_json::Value = serde_norway::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
    let only = serde_json::json!({ "fixtures": value.get("fixtures").cloned().unwrap_or_default() });
    let h: HasFixtures = serde_json::from_value(only).map_err(|e| format!("{path}: fixtures: {e}"))?;
    let base = Path::new(path).parent().unwrap_or(Path::new("."));
    h.fixtures.iter().map(|f| f.resolve(base)).collect()
}

/// `gatewarden eval`.
pub fn main(args: &[String]) -> Result<ExitCode, String> {
    let o = parse_args(args)?;
    let file = o.policy.clone().ok_or("eval needs --policy FILE")?;
    let policy = match load(&file, o.filter) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{file}: {e}");
            return Ok(ExitCode::from(if e.is_invalid() { 1 } else { 2 }));
        }
    };
    let could_not = |e: String| {
        eprintln!("gatewarden eval: {e}");
        Ok(ExitCode::from(2))
    };
    let (mut request, mut fixtures, mut profile, mut time) = (RequestSpec::default(), Vec::new(), None, None);
    if let Some(r) = &o.request {
        match read_yaml::<EvalDoc>(r) {
            Ok(EvalDoc::Full(f)) => {
                let base = Path::new(r).parent().unwrap_or(Path::new("."));
                match f.fixtures.iter().map(|x| x.resolve(base)).collect::<Result<Vec<_>, _>>() {
                    Ok(fx) => fixtures = fx,
                    Err(e) => return could_not(e),
                }
                (request, profile, time) = (f.request, f.profile, f.time);
            }
            Ok(EvalDoc::Bare(req)) => request = req,
            Err(e) => return could_not(format!("{e} (expected a request: method, path, headers, peer, body, time)")),
        }
    }
    if let Some(f) = &o.fixtures {
        match fixtures_of(f) {
            Ok(fx) => fixtures.extend(fx),
            Err(e) => return could_not(e),
        }
    }
    if let Some(m) = &o.method {
        request.method = m.clone();
    }
    if let Some(p) = &o.path {
        request.path = p.clone();
    }
    for (k, v) in &o.headers {
        request.headers.insert(k.clone(), HeaderValues::One(v.clone()));
    }
    if o.peer.is_some() {
        request.peer = o.peer.clone();
    }
    if o.body.is_some() {
        request.body = o.body.clone();
    }
    if let Some(t) = &o.time {
        request.time = Some(TimeSpec::Text(t.clone()));
    }
    let profile = match parse_profile(o.profile.as_deref().or(profile.as_deref())) {
        Ok(p) => p,
        Err(e) => return could_not(e),
    };
    let when = request.time.as_ref().or(time.as_ref()).map(TimeSpec::secs).transpose();
    let when = match when {
        Ok(t) => t.unwrap_or(DEFAULT_TIME),
        Err(e) => return could_not(format!("time: {e}")),
    };
    let mut modules = Modules::new(module_dir(o.modules.as_deref()));
    let module = match modules.get(policy.filter) {
        Ok(m) => m,
        Err(e) => return could_not(e),
    };
    let setup = Setup {
        module: &module.module,
        filter: policy.filter,
        policy_json: &policy.json,
        fixtures: &fixtures,
        profile,
        time: when,
    };
    let actual = match run_request(&setup, &request) {
        Ok(a) => a,
        Err(e) => return could_not(e),
    };
    let out = Output {
        decision: &actual.decision,
        status: actual.status,
        rule: actual.rule.as_deref(),
        reason: actual.reason.as_deref(),
        policy: &file,
        filter: policy.filter.name(),
        policy_version: &policy.policy_version,
        module: ModuleInfo { path: module.path.display().to_string(), sha256: &module.sha256 },
        actual: &actual,
    };
    println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_build_the_request() {
        let o = parse_args(&args(&["--policy", "p.yaml", "--method", "POST", "-H", "X-Api-Key:  k1 ", "--peer", "10.0.0.1"])).unwrap();
        assert_eq!(o.policy.as_deref(), Some("p.yaml"));
        assert_eq!(o.headers, vec![("x-api-key".to_string(), "k1".to_string())]);
        assert_eq!((o.method.as_deref(), o.peer.as_deref()), (Some("POST"), Some("10.0.0.1")));
        assert!(parse_args(&args(&["-H", "no-colon"])).unwrap_err().contains("expected 'name: value'"));
        assert!(parse_args(&args(&["--bogus"])).unwrap_err().contains("unknown option"));
    }

    #[test]
    fn a_request_file_is_a_bare_request_or_one_with_fixtures() {
        let bare: EvalDoc = serde_norway::from_str("path: /a\nheaders: { x-a: b }\n").unwrap();
        assert!(matches!(bare, EvalDoc::Bare(r) if r.path == "/a"));
        let full: EvalDoc = serde_norway::from_str("request: { path: /b }\nfixtures: [{ upstream: jwks, fail: true }]\nprofile: kong\n").unwrap();
        assert!(matches!(full, EvalDoc::Full(f) if f.request.path == "/b" && f.fixtures.len() == 1));
        assert!(serde_norway::from_str::<EvalDoc>("pth: /typo\n").is_err());
    }
}
