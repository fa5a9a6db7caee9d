use clap::Parser;
use fleet::config::Cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fleet::telemetry::init();
    let cli = Cli::parse();
    match fleet::commands::run(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("fleet: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
