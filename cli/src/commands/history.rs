//! `gatewarden history --to DIR`: the versions applied to an ECDS directory, `*` on the one each
//! filter serves now.

use crate::cli::Format;
use crate::ecds::{Entry, History};
use crate::error::{CliError, CmdResult};
use crate::policy_file::Filter;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ECDS directory.
    #[arg(long, value_name = "DIR")]
    pub to: String,
    /// Only this filter's versions.
    #[arg(long, value_name = "NAME", value_enum)]
    pub filter: Option<Filter>,
    /// text: a table; json: the entries without the policy JSON, with `current`.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// `gatewarden history`.
pub fn run(o: &Args) -> CmdResult {
    let dir = o.to.as_str();
    let h = History::open(dir).map_err(|e| CliError::could_not_run(format!("gatewarden history: {e}")))?;
    let is_current = |e: &Entry| e.filter().ok().and_then(|f| h.current(f)).is_some_and(|c| c.version == e.version);
    let shown: Vec<&Entry> = h.entries().iter().filter(|e| o.filter.is_none_or(|f| f.name() == e.filter)).collect();
    if o.format == Format::Json {
        let list: Vec<serde_json::Value> = shown
            .iter()
            .map(|e| {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                if let Some(m) = v.as_object_mut() {
                    m.remove("policy_json");
                    m.insert("current".into(), is_current(e).into());
                }
                v
            })
            .collect();
        let text = serde_json::to_string_pretty(&list).map_err(|e| CliError::could_not_run(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    if shown.is_empty() {
        println!("{dir}: nothing applied yet");
        return Ok(());
    }
    println!("  {:>3}  {:20}  {:7}  {:16}  {:12}  {:10}  MESSAGE", "VER", "TIME (UTC)", "FILTER", "POLICY_VERSION", "SHA256", "AUTHOR");
    for e in shown {
        let mut msg = e.message.clone();
        if let Some(v) = e.rollback_of {
            msg = if msg.is_empty() { format!("rollback to {v}") } else { msg };
        }
        println!(
            "{} {:>3}  {:20}  {:7}  {:16}  {:12}  {:10}  {msg}",
            if is_current(e) { "*" } else { " " },
            e.version,
            e.time,
            e.filter,
            e.policy_version,
            e.sha256.get(..12).unwrap_or(&e.sha256),
            e.author
        );
    }
    Ok(())
}
