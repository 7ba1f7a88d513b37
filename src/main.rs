//! The `ember` binary: parses the command line and runs it.

use clap::Parser;
use ember::cli::Cli;

fn main() {
    let cli = Cli::parse();
    ember::telemetry::init_logs(cli.log_format);
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
