use std::process::ExitCode;

fn main() -> ExitCode {
    pipe::cli::main_with(stages::builtin_registry())
}
