use std::process::ExitCode;

// Records, futures and batches are many small short-lived allocations; mimalloc's per-thread
// free lists make them several times cheaper than the system allocator (see benches/).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    pipe::cli::main_with(stages::builtin_registry())
}
