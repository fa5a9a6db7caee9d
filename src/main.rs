//! The `fleet` binary: parses the command line and runs it (see
//! `fleet::cli`). Exit codes, documented in `fleet::cli::exit` and the
//! README: 0 done or stopped by a signal, 1 unexpected failure, 2 usage or
//! configuration error (or an operator command refused), 3 a named dead
//! letter not found, 4 database schema behind this binary, 5 consumer name
//! held by a live worker. Redis or Postgres being down is waited for, never
//! an exit.

use clap::Parser;
use fleet::cli::Cli;

/// glibc's allocator cost the intake a fifth of its CPU per webhook
/// (docs/benchmarks.md); mimalloc's thread-local heaps cost a fraction.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fleet::telemetry::init();
    let cli = Cli::parse();
    match fleet::cli::run(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            let code = fleet::cli::exit_code(&err);
            if err.downcast_ref::<fleet::operator::OperatorExit>().is_some() {
                eprintln!("fleet: {err}");
                return std::process::ExitCode::from(code);
            }
            tracing::error!("{err:#}");
            eprintln!("fleet: {err:#}");
            std::process::ExitCode::from(code)
        }
    }
}
