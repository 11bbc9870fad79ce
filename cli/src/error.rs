//! The one error type of the CLI, and the only place an exit status is chosen.
//!
//! Every command returns [`CmdResult`]. The exit status is documented for users (docs/cli.md):
//!
//! | status | meaning |
//! |---|---|
//! | 0 | done: valid, passed, approved, written, no difference |
//! | 1 | invalid or failed: a policy the filter refuses, a test case failing, a verify failing, a diff with changes |
//! | 2 | could not run: bad usage, an unreadable file, a missing module, a directory that cannot be written |
//!
//! clap's own errors (unknown flag, missing value, a typo in a command name) are status 2;
//! `--help` and `--version` are 0.

use std::fmt;
use std::process::ExitCode;

use crate::policy_file::LoadError;

/// Why a command did not succeed: status 1 or 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 1: the input is invalid or a check failed.
    Failed,
    /// 2: the command could not do its job (usage, I/O, missing module).
    CouldNotRun,
}

impl Status {
    pub fn code(self) -> u8 {
        match self {
            Status::Failed => 1,
            Status::CouldNotRun => 2,
        }
    }
}

/// A command's failure: its status and the text for stderr (empty when the command already
/// printed what went wrong, e.g. the failing cases of `gatewarden test`).
#[derive(Debug)]
pub enum CliError {
    Exit {
        status: Status,
        message: String,
    },
    /// clap's parse result: a usage error (2), or `--help` / `--version` (0, printed to stdout).
    Clap(clap::Error),
}

/// What every command returns.
pub type CmdResult = Result<(), CliError>;

impl CliError {
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        CliError::Exit { status, message: message.into() }
    }

    /// Status 1 with a message.
    pub fn failed(message: impl Into<String>) -> Self {
        CliError::Exit { status: Status::Failed, message: message.into() }
    }

    /// Status 2 with a message.
    pub fn could_not_run(message: impl Into<String>) -> Self {
        CliError::Exit { status: Status::CouldNotRun, message: message.into() }
    }

    /// Status 2 for arguments clap accepts but the command cannot use; says where help is.
    pub fn usage(command: &str, message: impl fmt::Display) -> Self {
        Self::could_not_run(format!("gatewarden: {message}\n(see `gatewarden {command} --help`)"))
    }

    /// The status alone: the command already printed why.
    pub fn reported(status: Status) -> Self {
        CliError::Exit { status, message: String::new() }
    }

    /// A policy file that did not load: `FILE: message`; invalid (1) or unreadable (2).
    pub fn load(file: &str, e: &LoadError) -> Self {
        CliError::Exit { status: load_status(e), message: format!("{file}: {e}") }
    }

    pub fn status(&self) -> Option<Status> {
        match self {
            CliError::Exit { status, .. } => Some(*status),
            CliError::Clap(e) if e.exit_code() == 0 => None,
            CliError::Clap(_) => Some(Status::CouldNotRun),
        }
    }

    /// The message, or "" (clap errors render themselves).
    pub fn message(&self) -> &str {
        match self {
            CliError::Exit { message, .. } => message,
            CliError::Clap(_) => "",
        }
    }

    /// The same status with `line` added after the message (`apply refused, nothing changed`).
    pub fn then_line(self, line: impl fmt::Display) -> Self {
        match self {
            CliError::Exit { status, message } if message.is_empty() => CliError::Exit { status, message: line.to_string() },
            CliError::Exit { status, message } => CliError::Exit { status, message: format!("{message}\n{line}") },
            other => other,
        }
    }
}

/// A check that refused a policy or its settings (for a host, an apply), before the file name is
/// known: the status and a message naming the field and quoting the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: Status,
    pub message: String,
}

impl Refusal {
    /// The policy or its settings cannot run there (1).
    pub fn invalid(message: impl Into<String>) -> Self {
        Refusal { status: Status::Failed, message: message.into() }
    }

    /// Could not check (2).
    pub fn could_not_run(message: impl Into<String>) -> Self {
        Refusal { status: Status::CouldNotRun, message: message.into() }
    }

    /// The CLI error about `file`: `FILE: message`, then `closing` (what was not done).
    pub fn about(self, file: &str, closing: &str) -> CliError {
        CliError::Exit { status: self.status, message: format!("{file}: {}\n{closing}", self.message) }
    }
}

/// Invalid policy (1) rather than could-not-run (2).
pub fn load_status(e: &LoadError) -> Status {
    if e.is_invalid() {
        Status::Failed
    } else {
        Status::CouldNotRun
    }
}

impl From<clap::Error> for CliError {
    fn from(e: clap::Error) -> Self {
        CliError::Clap(e)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Exit { message, .. } => f.write_str(message),
            CliError::Clap(e) => write!(f, "{e}"),
        }
    }
}

/// Prints what went wrong and turns a command's result into the process exit status.
pub fn exit(result: CmdResult) -> ExitCode {
    let err = match result {
        Ok(()) => return ExitCode::SUCCESS,
        Err(e) => e,
    };
    match &err {
        // Help and version to stdout, usage errors to stderr, as clap renders them.
        CliError::Clap(e) => {
            let _ = e.print();
        }
        CliError::Exit { .. } if !err.message().is_empty() => eprintln!("{}", err.message()),
        CliError::Exit { .. } => {}
    }
    match err.status() {
        None => ExitCode::SUCCESS,
        Some(s) => ExitCode::from(s.code()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_one_and_two() {
        assert_eq!(CliError::failed("x").status(), Some(Status::Failed));
        assert_eq!(Status::Failed.code(), 1);
        assert_eq!(CliError::could_not_run("x").status().map(Status::code), Some(2));
        assert_eq!(CliError::usage("apply", "no").status(), Some(Status::CouldNotRun));
    }

    #[test]
    fn lines_are_added_after_the_message() {
        let e = CliError::failed("p.yaml: bad").then_line("gatewarden: apply refused, nothing changed");
        assert_eq!(e.message(), "p.yaml: bad\ngatewarden: apply refused, nothing changed");
        assert_eq!(CliError::reported(Status::Failed).then_line("x").message(), "x");
    }

    #[test]
    fn clap_help_is_success_and_usage_errors_are_two() {
        use clap::error::ErrorKind;
        let help = CliError::from(clap::Error::new(ErrorKind::DisplayHelp));
        assert_eq!(help.status(), None);
        let usage = CliError::from(clap::Error::new(ErrorKind::UnknownArgument));
        assert_eq!(usage.status(), Some(Status::CouldNotRun));
    }
}
