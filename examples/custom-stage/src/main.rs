//! `my-pipe`: the `pipe` command line with one extra stage kind.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut registry = stages::builtin_registry();
    registry.register::<custom_stage::RedactConfig>();
    pipe::cli::main_with(registry)
}
