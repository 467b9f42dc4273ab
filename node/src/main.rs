//! `image-preheat`: the node agent and command-line tool.

mod agent;
mod cli;
mod logging;
mod progress;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match agent::parse_cli() {
        Ok(a) => a,
        Err(code) => return ExitCode::from(code),
    };
    logging::init(args.log_format, &args.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(cli::EXIT_RUNTIME);
        }
    };
    let code = runtime.block_on(cli::run(args));
    ExitCode::from(code)
}
