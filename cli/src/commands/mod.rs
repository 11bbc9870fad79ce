//! One file per command, named as the command (`gatewarden render-json` is `render_json.rs`):
//! its `Args` (flags and their help) and its `run`. What several commands share lives outside
//! this folder: reading policies (`policy_file`), the ECDS directory and its history (`ecds/`),
//! the host configurations (`hosts/`), running a request through a module (`run`), policy tests
//! (`policy_test/`).

pub mod abort;
pub mod apply;
pub mod completions;
pub mod counters;
pub mod diff;
pub mod eval;
pub mod geo_lookup;
pub mod history;
pub mod keygen;
pub mod promote;
pub mod render;
pub mod render_json;
pub mod rollback;
pub mod schema;
pub mod sign;
pub mod test;
pub mod validate;
pub mod verify;

use crate::cli::Command;
use crate::error::CmdResult;

/// Runs the parsed command.
pub fn run(command: Command) -> CmdResult {
    match command {
        Command::Validate(a) => validate::run(&a),
        Command::Schema(a) => schema::run(&a),
        Command::RenderJson(a) => render_json::run(&a),
        Command::GeoLookup(a) => geo_lookup::run(&a),
        Command::Test(a) => test::run(&a),
        Command::Eval(a) => eval::run(&a),
        Command::Render(a) => render::run(&a),
        Command::Apply(a) => apply::run(&a),
        Command::History(a) => history::run(&a),
        Command::Diff(a) => diff::run(&a),
        Command::Rollback(a) => rollback::run(&a),
        Command::Keygen(a) => keygen::run(&a),
        Command::Sign(a) => sign::run(&a),
        Command::Verify(a) => verify::run(&a),
        Command::Promote(a) => promote::run(&a),
        Command::Abort(a) => abort::run(&a),
        Command::Counters(a) => counters::run(&a),
        Command::Completions(a) => completions::run(&a),
    }
}
