//! `gatewarden eval --policy P [--request R.yaml] [flags]`: one request through the built module,
//! printed as JSON — the decision, status, matching rule, reason, headers set for the upstream and
//! the client, and the decision log line. The debugging tool.
//!
//! R.yaml is a request as in a test case (`method`, `path`, `authority`, `headers`, `peer`, `body`,
//! `time`), or `{ request: {...}, fixtures: [...], profile: kong, time: ... }`. Flags override it:
//! `--method M --path P --header 'name: value' --peer IP[:PORT] --body TEXT | --body-file F --time T`.
//! `--fixtures FILE` takes the `fixtures` of a test file (paths relative to it).
//! Exit status: 0 evaluated (whatever the decision), 1 invalid policy, 2 could not run.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cli::FilterArg;
use crate::error::{CliError, CmdResult};
use crate::modules::{module_dir, Modules};
use crate::policy_file::load;
use crate::run::{
    parse_profile, run_request, Actual, BodySpec, Fixture, FixtureSpec, HeaderValues, RequestSpec, Setup, TimeSpec, DEFAULT_TIME,
};

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

#[derive(Debug, clap::Args)]
#[command(after_help = "Exit status: 0 evaluated (whatever the decision), 1 invalid policy, 2 could not run.")]
pub struct Args {
    /// The policy file (YAML or JSON).
    #[arg(long = "policy", value_name = "POLICY", required_unless_present = "policy_arg", conflicts_with = "policy_arg")]
    pub policy: Option<String>,
    /// The policy file, as an argument instead of --policy.
    #[arg(value_name = "POLICY")]
    pub policy_arg: Option<String>,
    /// A request file: a request as in a test case (method, path, authority, headers, peer, body,
    /// time), or `{request, fixtures, profile, time}`.
    #[arg(long, value_name = "R.yaml")]
    pub request: Option<String>,
    /// Answer the filter's callouts with the `fixtures` of this test file (paths relative to it).
    #[arg(long, value_name = "TESTFILE")]
    pub fixtures: Option<String>,
    /// Where the built modules are (default: $GATEWARDEN_WASM_DIR, else target/wasm32-wasip1/release).
    #[arg(long, value_name = "DIR")]
    pub modules: Option<String>,
    #[command(flatten)]
    pub filter: FilterArg,
    /// The host profile the Wasm host plays: envoy or kong (default: the request file's, else envoy).
    #[arg(long, value_name = "envoy|kong")]
    pub profile: Option<String>,
    /// The request method (default GET).
    #[arg(long, value_name = "M")]
    pub method: Option<String>,
    /// The request path with query string (default /).
    #[arg(long, value_name = "P")]
    pub path: Option<String>,
    /// A request header `name: value`; repeat for more.
    #[arg(short = 'H', long = "header", value_name = "'name: value'", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// The client address the proxy saw: IP or IP:PORT (default 192.0.2.10:40000).
    #[arg(long, value_name = "IP[:PORT]")]
    pub peer: Option<String>,
    /// The request body.
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// The request body, read from a file (as it is: a JSON file is sent byte for byte).
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<String>,
    /// The host clock: 2026-01-01T00:00:00Z or Unix seconds (default 2026-01-01T00:00:00Z).
    #[arg(long, value_name = "T")]
    pub time: Option<String>,
}

fn parse_header(h: &str) -> Result<(String, String), String> {
    let (k, v) = h.split_once(':').ok_or_else(|| format!("{h:?}: expected 'name: value'"))?;
    Ok((k.trim().to_ascii_lowercase(), v.trim().to_string()))
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
pub fn run(o: &Args) -> CmdResult {
    let file = o.policy.clone().or_else(|| o.policy_arg.clone()).unwrap_or_default();
    let policy = load(&file, o.filter.filter).map_err(|e| CliError::load(&file, &e))?;
    let could_not = |e: String| CliError::could_not_run(format!("gatewarden eval: {e}"));
    let (mut request, mut fixtures, mut profile, mut time) = (RequestSpec::default(), Vec::new(), None, None);
    if let Some(r) = &o.request {
        match read_yaml::<EvalDoc>(r) {
            Ok(EvalDoc::Full(f)) => {
                let base = Path::new(r).parent().unwrap_or(Path::new("."));
                fixtures = f.fixtures.iter().map(|x| x.resolve(base)).collect::<Result<Vec<_>, _>>().map_err(could_not)?;
                (request, profile, time) = (f.request, f.profile, f.time);
            }
            Ok(EvalDoc::Bare(req)) => request = req,
            Err(e) => return Err(could_not(format!("{e} (expected a request: method, path, headers, peer, body, time)"))),
        }
    }
    if let Some(f) = &o.fixtures {
        fixtures.extend(fixtures_of(f).map_err(could_not)?);
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
    if let Some(b) = &o.body {
        request.body = Some(BodySpec::Text(b.clone()));
        request.body_size = None;
    }
    if let Some(f) = &o.body_file {
        let text = std::fs::read_to_string(f).map_err(|e| could_not(format!("{f}: cannot read: {e}")))?;
        request.body = Some(BodySpec::Text(text));
        request.body_size = None;
    }
    if let Some(t) = &o.time {
        request.time = Some(TimeSpec::Text(t.clone()));
    }
    let profile = parse_profile(o.profile.as_deref().or(profile.as_deref())).map_err(could_not)?;
    let when = request.time.as_ref().or(time.as_ref()).map(TimeSpec::secs).transpose();
    let when = when.map_err(|e| could_not(format!("time: {e}")))?.unwrap_or(DEFAULT_TIME);
    let mut modules = Modules::new(module_dir(o.modules.as_deref()));
    let module = modules.get(policy.filter).map_err(could_not)?;
    let setup =
        Setup { module: &module.module, filter: policy.filter, policy_json: &policy.json, fixtures: &fixtures, profile, time: when };
    let actual = run_request(&setup, &request).map_err(could_not)?;
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
    println!("{}", serde_json::to_string_pretty(&out).map_err(|e| could_not(e.to_string()))?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_file_is_a_bare_request_or_one_with_fixtures() {
        let bare: EvalDoc = serde_norway::from_str("path: /a\nheaders: { x-a: b }\n").unwrap();
        assert!(matches!(bare, EvalDoc::Bare(r) if r.path == "/a"));
        let full: EvalDoc =
            serde_norway::from_str("request: { path: /b }\nfixtures: [{ upstream: jwks, fail: true }]\nprofile: kong\n").unwrap();
        assert!(matches!(full, EvalDoc::Full(f) if f.request.path == "/b" && f.fixtures.len() == 1));
        assert!(serde_norway::from_str::<EvalDoc>("pth: /typo\n").is_err());
    }

    #[test]
    fn headers_are_name_colon_value() {
        assert_eq!(parse_header("X-Api-Key:  k1 "), Ok(("x-api-key".to_string(), "k1".to_string())));
        assert!(parse_header("no-colon").unwrap_err().contains("expected 'name: value'"));
    }
}
