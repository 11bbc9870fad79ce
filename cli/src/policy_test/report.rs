//! The reports of a test run: how each case ended, per file, and the text printed for people.

use crate::policy_test::compare::Mismatch;
use crate::run::Actual;

/// How a case ended.
#[derive(Debug, Clone)]
pub enum Verdict {
    Pass,
    Fail(Vec<Mismatch>),
    /// Refused before running: the case asserts nothing (counted as failed).
    Invalid(String),
    /// Could not run.
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
    /// Failed cases, and cases refused because they assert nothing.
    pub fn failures(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Fail(_) | Verdict::Invalid(_)))
    }
    pub fn errors(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Error(_))) + usize::from(self.error.is_some())
    }
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

pub fn print_file(report: &FileReport) {
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
            Verdict::Invalid(e) => {
                println!("  INVALID {}", c.name);
                println!("         {e}");
            }
            Verdict::Error(e) => println!("  ERROR  {}: {e}", c.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_text_aligns_fields() {
        let d = [Mismatch { field: "status".into(), expected: "403".into(), actual: "200".into() }];
        assert_eq!(format_diff(&d), "status  - expected 403\n        + actual   200\n");
    }
}
