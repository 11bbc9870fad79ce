//! JUnit XML for CI systems: one `<testsuite>` per test file, one `<testcase>` per case, a
//! `<failure>` holding the diff (`type="invalid"`: why a case that asserts nothing was refused),
//! an `<error>` for a case (or file) that could not run.

use crate::policy_test::report::{format_diff, FileReport, Verdict};

/// Escapes text for XML attributes and content; drops characters XML 1.0 cannot carry.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' | '\r' => out.push(' '),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// Escapes element content (newlines kept).
fn text(s: &str) -> String {
    escape(s).replace("&#10;", "\n")
}

/// The whole document.
pub fn render(reports: &[FileReport], seconds: f64) -> String {
    let tests: usize = reports.iter().map(|r| r.cases.len() + usize::from(r.error.is_some())).sum();
    let failures: usize = reports.iter().map(FileReport::failures).sum();
    let errors: usize = reports.iter().map(FileReport::errors).sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(&format!(
        "<testsuites name=\"gatewarden\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{seconds:.3}\">\n"
    ));
    for r in reports {
        let name = escape(&r.path);
        x.push_str(&format!(
            "  <testsuite name=\"{name}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"0\" time=\"{:.3}\">\n",
            r.cases.len() + usize::from(r.error.is_some()),
            r.failures(),
            r.errors(),
            r.seconds
        ));
        if let Some(p) = &r.policy {
            x.push_str("    <properties>\n");
            x.push_str(&format!("      <property name=\"policy\" value=\"{}\"/>\n", escape(p)));
            if let Some(v) = &r.policy_version {
                x.push_str(&format!("      <property name=\"policy_version\" value=\"{}\"/>\n", escape(v)));
            }
            x.push_str("    </properties>\n");
        }
        if let Some(e) = &r.error {
            x.push_str(&format!(
                "    <testcase classname=\"{name}\" name=\"(load)\" time=\"0.000\">\n      <error message=\"{}\">{}</error>\n    </testcase>\n",
                escape(e),
                text(e)
            ));
        }
        for c in &r.cases {
            let head = format!("    <testcase classname=\"{name}\" name=\"{}\" time=\"{:.3}\"", escape(&c.name), c.seconds);
            match &c.verdict {
                Verdict::Pass => x.push_str(&format!("{head}/>\n")),
                Verdict::Fail(diff) => {
                    let fields: Vec<&str> = diff.iter().map(|m| m.field.as_str()).collect();
                    x.push_str(&format!(
                        "{head}>\n      <failure message=\"{}\" type=\"mismatch\">{}</failure>\n    </testcase>\n",
                        escape(&format!("differs in {}", fields.join(", "))),
                        text(&format_diff(diff))
                    ));
                }
                Verdict::Invalid(why) => x.push_str(&format!(
                    "{head}>\n      <failure message=\"{}\" type=\"invalid\">{}</failure>\n    </testcase>\n",
                    escape(why),
                    text(why)
                )),
                Verdict::Error(e) => {
                    x.push_str(&format!("{head}>\n      <error message=\"{}\">{}</error>\n    </testcase>\n", escape(e), text(e)))
                }
            }
        }
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_control_characters() {
        assert_eq!(escape("a<b>&\"c'\u{1}\n"), "a&lt;b&gt;&amp;&quot;c&apos;?&#10;");
    }
}
