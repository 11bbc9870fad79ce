//! `gatewarden schema NAME [--kong]`: a filter's policy JSON Schema as a policy file may be
//! written (with the file fields the command inlines, `crate::include`), or Kong's meta.json (what
//! the filter itself takes).

use crate::error::{CliError, CmdResult};
use crate::policy_file::Filter;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The filter.
    #[arg(value_name = "NAME", value_enum)]
    pub filter: Filter,
    /// Print Kong's `<filter>.meta.json` (the schema Kong validates `config` with) instead.
    #[arg(long)]
    pub kong: bool,
}

pub fn run(a: &Args) -> CmdResult {
    let schema = a.filter.schema();
    let out = if a.kong { gatewarden_policy::schema::kong_meta(schema) } else { crate::include::with_file_fields(a.filter, schema) };
    let text = serde_json::to_string_pretty(&out).map_err(|e| CliError::could_not_run(e.to_string()))?;
    println!("{text}");
    Ok(())
}
