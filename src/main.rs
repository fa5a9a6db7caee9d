use clap::Parser;
use fleet::cli::Cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fleet::telemetry::init();
    let cli = Cli::parse();
    match fleet::cli::run(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            if let Some(exit) = err.downcast_ref::<fleet::operator::OperatorExit>() {
                eprintln!("fleet: {exit}");
                return std::process::ExitCode::from(exit.code);
            }
            tracing::error!("{err:#}");
            eprintln!("fleet: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
