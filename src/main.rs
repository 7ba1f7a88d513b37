//! The `ember` binary: parses the command line and runs it.

use clap::Parser;
use ember::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("EMBER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // A log line that cannot be written (stderr closed) is dropped: reporting that failure on
    // stderr would panic the task that logged, e.g. the one that starts the graceful drain.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ember: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let status = runtime
        .block_on(ember::cli::run(cli.command))
        .unwrap_or_else(|e| {
            eprintln!("ember: {e:#}");
            1
        });
    std::process::exit(status);
}
