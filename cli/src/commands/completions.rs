//! `gatewarden completions SHELL`: a completion script for the shell, generated from the same
//! parser as the commands (`cli.rs`), so it knows every command, flag and value list.

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;
use crate::error::{CliError, CmdResult};

#[derive(Debug, clap::Args)]
#[command(after_help = "Install, e.g.:\n  \
                        bash: gatewarden completions bash > ~/.local/share/bash-completion/completions/gatewarden\n  \
                        zsh:  gatewarden completions zsh > \"${fpath[1]}/_gatewarden\"\n  \
                        fish: gatewarden completions fish > ~/.config/fish/completions/gatewarden.fish")]
pub struct Args {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The script for `shell`.
pub fn script(shell: Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "gatewarden", &mut out);
    out
}

/// `gatewarden completions`.
pub fn run(a: &Args) -> CmdResult {
    use std::io::Write;
    std::io::stdout().write_all(&script(a.shell)).map_err(|e| CliError::could_not_run(format!("gatewarden completions: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_script_names_the_commands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = String::from_utf8_lossy(&script(shell)).into_owned();
            for cmd in ["validate", "render-json", "rollback", "completions"] {
                assert!(text.contains(cmd), "{shell:?} script lacks {cmd}");
            }
        }
    }
}
