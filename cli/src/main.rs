//! `gatewarden`: the policy lifecycle command. `gatewarden --help` lists the commands,
//! `gatewarden <command> --help` their flags; docs/cli.md is the user's reference.
//!
//! Where things are: `cli.rs` (the parser: the list of commands), `commands/<command>.rs` (one
//! file per command), `error.rs` (the one error type and the exit statuses), and the pieces the
//! commands share: `policy_file` (read + compile a policy with the filter's own code), `include`
//! (the files a policy names, inlined), `policy_doc` (edit a policy file keeping its format),
//! `policy_diff`, `trust` (approvals), `ecds/` (the directory Envoy watches: resource, history,
//! apply), `hosts/` (Istio, Kong, nginx, compose configs), `modules` + `run` (a request through a
//! built .wasm in the Wasm host), `policy_test/` (test files, comparison, reports, JUnit),
//! `atomic`, `timefmt`.
//! Validation runs exactly the code the filter runs in `on_configure`.

#![forbid(unsafe_code)]

mod atomic;
mod cli;
mod commands;
mod ecds;
mod error;
mod hosts;
mod include;
mod modules;
mod policy_diff;
mod policy_doc;
mod policy_file;
mod policy_test;
mod rollout;
mod run;
mod timefmt;
mod trust;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let result = cli::Cli::try_parse().map_err(error::CliError::from).and_then(|cli| commands::run(cli.command));
    error::exit(result)
}
