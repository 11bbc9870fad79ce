//! The command line: one clap parser, a subcommand per command. Each command's flags and their
//! help live with its code (`commands/<command>.rs`, an `Args` struct); this file lists the
//! commands and the argument types several of them share.

use clap::builder::PossibleValue;
use clap::{Parser, Subcommand, ValueEnum};

use crate::commands::{
    abort, apply, completions, counters, diff, eval, geo_lookup, history, keygen, promote, render, render_json, rollback, schema, sign,
    test, validate, verify,
};
use crate::policy_file::Filter;

const AFTER_HELP: &str = "\
Exit status: 0 ok; 1 invalid or failed (a policy the filter refuses, a test failing, a verify
failing, a diff with changes); 2 could not run (bad usage, unreadable file, missing module).

Filters: ip_geo, jwt, rate_limit, validate. The modules are found with --modules DIR, else $GATEWARDEN_WASM_DIR, else
target/wasm32-wasip1/release. Docs: docs/cli.md.";

/// `gatewarden`: the policy lifecycle command.
#[derive(Debug, Parser)]
#[command(
    name = "gatewarden",
    version,
    about = "Gatewarden policies from a file in git to a live proxy: validate, test against the built .wasm, \
             render, apply, roll back, approve.",
    after_help = AFTER_HELP,
    arg_required_else_help = true,
    subcommand_required = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check policy files with the filters' own compile code (exit 1 when one is invalid).
    Validate(validate::Args),
    /// Print a filter's policy JSON Schema (or Kong's meta.json with --kong).
    Schema(schema::Args),
    /// Print a policy as the compact JSON its filter receives.
    RenderJson(render_json::Args),
    /// Print the country a MaxMind database gives each address, as the IP/geo filter reads it.
    GeoLookup(geo_lookup::Args),
    /// Run policy test files (*.test.yaml) through the built .wasm modules.
    Test(test::Args),
    /// Run one request through the built module and print the decision as JSON.
    Eval(eval::Args),
    /// Render the plugin configuration of a policy for Envoy, Istio, Kong, nginx or compose.
    Render(render::Args),
    /// Validate a policy, record it in the history and write the ECDS file Envoy watches.
    Apply(apply::Args),
    /// List the versions applied to an ECDS directory.
    History(history::Args),
    /// Show what changed between two policies (files, or history versions with --to).
    Diff(diff::Args),
    /// Re-apply an earlier version of an ECDS directory as a new version.
    Rollback(rollback::Args),
    /// Make an Ed25519 key pair for approving policies.
    Keygen(keygen::Args),
    /// Add (or replace) a signature to a policy file.
    Sign(sign::Args),
    /// Check a policy's signatures against trust settings with the filter's own check.
    Verify(verify::Args),
    /// End a rollout: the candidate becomes the policy.
    Promote(promote::Args),
    /// End a rollout: drop the candidate, keep the active policy.
    Abort(abort::Args),
    /// List the metrics a filter module defines, as each host names them.
    Counters(counters::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::Args),
}

/// `--format text|json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    #[default]
    Text,
    /// For tools.
    Json,
}

/// Filters are named on the command line as in a policy's `filter` field.
impl ValueEnum for Filter {
    fn value_variants<'a>() -> &'a [Self] {
        &Filter::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.name()))
    }
}

/// `--filter NAME`, for a policy without a `filter` field.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct FilterArg {
    /// The filter, when the policy has no `filter` field.
    #[arg(long, value_name = "NAME", value_enum)]
    pub filter: Option<Filter>,
}

/// Where the module is and how its VM is named: `render`, `apply`, `rollback`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ModuleArgs {
    /// The module file as the proxy sees it (default: <modules dir>/gatewarden_<filter>.wasm).
    #[arg(long, value_name = "PATH", conflicts_with = "modules")]
    pub module: Option<String>,
    /// The modules directory (default: $GATEWARDEN_WASM_DIR, else target/wasm32-wasip1/release).
    #[arg(long, value_name = "DIR")]
    pub modules: Option<String>,
    /// The VM id and root id (nginx: the module name); default gatewarden_<filter>.
    #[arg(long, value_name = "ID")]
    pub vm_id: Option<String>,
    /// Approval trust settings (the VM configuration): the policy must pass the filter's
    /// signature check against them, and the resource carries them.
    #[arg(long, value_name = "TRUST.json")]
    pub vm_config: Option<String>,
}

/// `--author A -m MSG`: who changed an ECDS directory and why (recorded in its history).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ChangeArgs {
    /// Recorded as the author (default: $GATEWARDEN_AUTHOR, else $USER).
    #[arg(long, value_name = "NAME")]
    pub author: Option<String>,
    /// Recorded as the reason for the change.
    #[arg(short = 'm', long, value_name = "MSG", allow_hyphen_values = true)]
    pub message: Option<String>,
}

impl ChangeArgs {
    /// `--author`, else `$GATEWARDEN_AUTHOR`, `$USER`, `$LOGNAME`, else `unknown`.
    pub fn author(&self) -> String {
        self.author.clone().unwrap_or_else(|| {
            ["GATEWARDEN_AUTHOR", "USER", "LOGNAME"]
                .iter()
                .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
                .unwrap_or_else(|| "unknown".into())
        })
    }
}

/// The parsed command line of `args` (without the program name), for tests.
#[cfg(test)]
pub fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("gatewarden").chain(args.iter().copied()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_parser_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn old_spellings_still_parse() {
        let c = parse(&["apply", "p.yaml", "--to", "d", "-m", "msg", "--author", "a"]);
        assert!(matches!(c, Ok(Cli { command: Command::Apply(_) })), "{c:?}");
        let c = parse(&["rollback", "--to", "d", "--version", "v2"]);
        assert!(matches!(&c, Ok(Cli { command: Command::Rollback(r) }) if r.version == Some(2)), "{c:?}");
        let c = parse(&["validate", "--filter", "jwt", "--format", "json", "a.yaml", "b.yaml"]);
        assert!(matches!(&c, Ok(Cli { command: Command::Validate(v) }) if v.files.len() == 2), "{c:?}");
        let c = parse(&["eval", "p.yaml", "-H", "a: b", "--header", "c: d"]);
        assert!(matches!(&c, Ok(Cli { command: Command::Eval(e) }) if e.headers.len() == 2), "{c:?}");
    }

    #[test]
    fn filters_are_named_as_in_policies() {
        let c = parse(&["schema", "ip_geo"]);
        assert!(matches!(&c, Ok(Cli { command: Command::Schema(s) }) if s.filter == Filter::IpGeo), "{c:?}");
        let e = parse(&["schema", "ipgeo"]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("[possible values: ip_geo, jwt, rate_limit, validate]"), "{e}");
    }
}
