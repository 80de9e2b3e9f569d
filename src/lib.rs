//! The `pipe` command line, as a library so that an outside crate can build its own `pipe`
//! binary with extra stages: `pipe::cli::main_with(registry)`.

pub mod cli;
