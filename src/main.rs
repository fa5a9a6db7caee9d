//! The `fleet` binary: parses the command line and runs it (see
//! `fleet::cli`), and exits with the code `fleet::exit` lists. Redis or
//! Postgres being down is waited for, never an exit.

use clap::Parser;
use fleet::cli::Cli;

/// glibc's allocator cost the intake a fifth of its CPU per webhook
/// (docs/benchmarks.md); mimalloc's thread-local heaps cost a fraction.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if let Err(refused) = fleet::telemetry::init() {
        eprintln!("fleet: {refused}");
        return std::process::ExitCode::from(fleet::exit::USAGE);
    }
    let cli = Cli::parse();
    match fleet::cli::run(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            let code = fleet::cli::exit_code(&err);
            if err.downcast_ref::<fleet::exit::Exit>().is_some() {
                eprintln!("fleet: {err}");
                return std::process::ExitCode::from(code);
            }
            tracing::error!("{err:#}");
            eprintln!("fleet: {err:#}");
            std::process::ExitCode::from(code)
        }
    }
}
