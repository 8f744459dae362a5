//! The binary: parse the command line, load the configuration without binding anything (exit 2 on a bad one),
//! then hand over to the library. Exit status: 0 clean stop, 2 configuration error, 1 any other fatal error.

use std::process::ExitCode;

use clap::Parser;
use issettled_proxy::{
    app,
    cli::{Cli, Command},
    config::{self, Config, ConfigError, ConfigFile},
    telemetry, wait,
};

/// mimalloc: see bench/README.md for the measurements behind it.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match (cli.command, cli.config) {
        (Some(c), _) => c,
        (None, Some(config)) => Command::Run { config },
        (None, None) => {
            eprintln!("issettled-proxy: nothing to do; try `issettled-proxy --help`");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("issettled-proxy: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match command {
        Command::Run { config } => match loaded(&config, app::startup) {
            Ok(cfg) => {
                let _log = telemetry::init(cfg.log.format, &cfg.log.filter);
                exit(runtime.block_on(app::run_bound(cfg)))
            }
            Err(e) => config_error(&e),
        },
        Command::CheckConfig { config } => match loaded(&config, app::check) {
            Ok(cfg) => {
                print!("{}", app::render_effective(&cfg));
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        #[cfg(feature = "demo")]
        Command::Demo => exit(runtime.block_on(issettled_proxy::demo::run())),
        Command::Wait { admin, timeout } => match runtime.block_on(wait::until_ready(&admin, timeout)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(why) => {
                eprintln!(
                    "issettled-proxy wait: {admin} was not ready within {}: {why}",
                    humantime::format_duration(timeout)
                );
                ExitCode::from(1)
            }
        },
    }
}

/// One worker thread per CPU this process may run on; on a single CPU (a sidecar with a one-core limit, or a
/// pinned benchmark), a current-thread runtime: no work stealing and no cross-thread wake-ups. Measured in
/// bench/README.md.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cpus);
        b
    };
    builder.enable_all().build()
}

/// Load the configuration file with the process environment and apply `checks` (`run` and `check-config` check
/// the same things: see `app::startup` and `app::check`); their errors name the variable that set a bad value.
fn loaded(path: &std::path::Path, checks: fn(&Config) -> Result<(), ConfigError>) -> Result<Config, ConfigError> {
    let env = config::process_env();
    let cfg = config::load(ConfigFile::Path(path), &env)?;
    checks(&cfg).map_err(|e| e.naming_its_variable(&env))?;
    Ok(cfg)
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("issettled-proxy: configuration error: {e}");
    ExitCode::from(2)
}

fn exit(result: Result<(), app::AppError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(app::AppError::Config(e)) => config_error(&e),
        Err(e) => {
            tracing::error!(error = %e, "fatal");
            eprintln!("issettled-proxy: {e}");
            ExitCode::from(1)
        }
    }
}
