//! `gatewarden test [DIR|FILE]...`: policy test files run through the built `.wasm` modules, each
//! case in a fresh VM (the test file format: `policy_test`). Prints a line per case and a summary
//! naming each module's sha256; `--junit FILE` writes the same as JUnit XML.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{CliError, CmdResult, Status};
use crate::modules::{module_dir, Modules};
use crate::policy_file::{load, Filter};
use crate::policy_test::compare::compare_all;
use crate::policy_test::file::{discover, parse_test_file};
use crate::policy_test::junit;
use crate::policy_test::report::{print_file, CaseReport, FileReport, Verdict};
use crate::run::{parse_profile, run_requests, Fixture, Setup, TimeSpec, DEFAULT_TIME};

#[derive(Debug, clap::Args)]
#[command(after_help = "A case must assert something: a case without `expect` or with `expect: {}` is refused.\n\
                        Exit status: 0 all passed, 1 a case failed or asserts nothing, 2 could not run (no test \
                        files, a bad test file, an invalid policy, a missing module).")]
pub struct Args {
    /// Test files (*.test.yaml, *.test.yml, *.test.json) or directories searched for them; default `.`.
    #[arg(value_name = "DIR|FILE")]
    pub paths: Vec<String>,
    /// Where the built modules are (default: $GATEWARDEN_WASM_DIR, else target/wasm32-wasip1/release).
    #[arg(long, value_name = "DIR")]
    pub modules: Option<String>,
    /// Also write the results as JUnit XML.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<String>,
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
    let mut report =
        FileReport { path: path.display().to_string(), error: None, policy: None, policy_version: None, cases: Vec::new(), seconds: 0.0 };
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
        let expect = match case.expectation() {
            Ok(e) => e,
            Err(why) => {
                let verdict = Verdict::Invalid(why);
                report.cases.push(CaseReport { name: case.name.clone(), verdict, actual: None, seconds: 0.0 });
                progress.done += 1;
                continue;
            }
        };
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
            run_requests(&setup, &case.request, case.repeat.unwrap_or(1), Duration::from_millis(case.every_ms.unwrap_or(0)))
        });
        let (verdict, actual) = match result {
            Ok(mut all) => {
                let diff = compare_all(expect, &all);
                (if diff.is_empty() { Verdict::Pass } else { Verdict::Fail(diff) }, all.pop())
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

/// `gatewarden test`.
pub fn run(o: &Args) -> CmdResult {
    let paths = if o.paths.is_empty() { vec![".".to_string()] } else { o.paths.clone() };
    let started = Instant::now();
    let mut files = Vec::new();
    for p in &paths {
        files.extend(discover(Path::new(p)).map_err(|e| CliError::could_not_run(format!("gatewarden test: {e}")))?);
    }
    if files.is_empty() {
        return Err(CliError::could_not_run(format!(
            "gatewarden test: no test files (*.test.yaml, *.test.yml, *.test.json) under {}",
            paths.join(", ")
        )));
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
        std::fs::write(path, xml).map_err(|e| CliError::could_not_run(format!("gatewarden test: cannot write {path}: {e}")))?;
    }
    // The refused cases, with their file, where CI logs show them (stderr).
    let invalid: Vec<String> = reports
        .iter()
        .flat_map(|r| {
            r.cases.iter().filter_map(move |c| match &c.verdict {
                Verdict::Invalid(why) => Some(format!("gatewarden test: {}: case {:?}: {why}", r.path, c.name)),
                _ => None,
            })
        })
        .collect();
    if errors > 0 {
        Err(CliError::new(Status::CouldNotRun, invalid.join("\n")))
    } else if failed > 0 {
        Err(CliError::new(Status::Failed, invalid.join("\n")))
    } else {
        Ok(())
    }
}
