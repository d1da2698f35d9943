//! Process entry: flags -> config -> tracing -> runtime -> app::run. A bad config exits with
//! code 64 before any port is bound.

use cacheside::config::{Config, ConfigError, EnvVars, Validated};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit code for a configuration error (EX_USAGE in sysexits.h).
const EXIT_CONFIG: u8 = 64;
/// Used when no --config is given and this file exists in the working directory.
const DEFAULT_CONFIG: &str = "proxy.toml";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "cacheside",
    version,
    about = "Transparent Redis-protocol caching proxy sidecar"
)]
struct Args {
    /// Config file (TOML). Default: ./proxy.toml if it exists.
    #[arg(long, short, env = "CACHESIDE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address for Redis clients (server.listen).
    #[arg(long, env = "CACHESIDE_SERVER_LISTEN", global = true)]
    listen: Option<String>,
    /// Upstream Redis URL, redis://[user:pass@]host:port[/db] or rediss:// for TLS (upstream.url).
    #[arg(long, env = "CACHESIDE_UPSTREAM_URL", global = true)]
    upstream: Option<String>,
    /// Address of the /startupz /livez /readyz /metrics listener; "" disables it (admin.listen).
    #[arg(long, env = "CACHESIDE_ADMIN_LISTEN", global = true)]
    admin_listen: Option<String>,
    /// Log filter, e.g. "info" or "cacheside=debug" (log.level).
    #[arg(long, env = "CACHESIDE_LOG_LEVEL", global = true)]
    log_level: Option<String>,
    /// PostgreSQL URL for read-through mappings (postgres.url).
    #[arg(long, env = "CACHESIDE_POSTGRES_URL", global = true)]
    postgres: Option<String>,
    /// Log format: text or json (log.format).
    #[arg(long, env = "CACHESIDE_LOG_FORMAT", global = true)]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug, Clone)]
enum Cmd {
    /// Validate the configuration, print the effective config (secrets masked) and exit.
    CheckConfig,
    /// PostgreSQL helpers.
    Db {
        #[command(subcommand)]
        action: DbCmd,
    },
}

#[derive(Subcommand, Debug, Clone)]
enum DbCmd {
    /// Install the triggers that NOTIFY row changes of the tables the mappings read
    /// (postgres.notify), in the database of postgres.url.
    InstallNotify {
        /// Print the SQL instead of running it.
        #[arg(long)]
        print: bool,
    },
}

/// The config file: --config, or ./proxy.toml if it exists.
fn config_path(args: &Args) -> Option<PathBuf> {
    args.config.clone().or_else(|| {
        Path::new(DEFAULT_CONFIG)
            .exists()
            .then(|| PathBuf::from(DEFAULT_CONFIG))
    })
}

fn load(args: &Args) -> Result<Validated, ConfigError> {
    let mut config = Config::load(config_path(args).as_deref(), &EnvVars)?;
    if let Some(v) = &args.listen {
        config.server.listen = v.clone();
    }
    if let Some(v) = &args.upstream {
        config.upstream.url = Some(v.clone());
    }
    if let Some(v) = &args.admin_listen {
        config.admin.listen = v.clone();
    }
    if let Some(v) = &args.log_level {
        config.log.level = v.clone();
    }
    if let Some(v) = &args.log_format {
        config.log.format = v.clone();
    }
    if let Some(v) = &args.postgres {
        config.postgres.url = Some(v.clone());
    }
    config.validate()
}

fn init_tracing(v: &Validated) {
    let filter = tracing_subscriber::EnvFilter::try_new(&v.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if v.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let validated = match load(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("cacheside: config error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing(&validated);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(validated.worker_threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cacheside: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = runtime.block_on(cacheside::app::check_mappings(&validated)) {
        eprintln!("cacheside: config error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match args.command.clone() {
        Some(Cmd::CheckConfig) => {
            print!("{}", validated.config.redacted_toml());
            eprintln!("cacheside: config OK");
            return ExitCode::SUCCESS;
        }
        Some(Cmd::Db {
            action: DbCmd::InstallNotify { print },
        }) => {
            return match runtime.block_on(cacheside::app::install_notify(&validated, print)) {
                Ok(sql) if print => {
                    print!("{sql}");
                    ExitCode::SUCCESS
                }
                Ok(_) => {
                    eprintln!("cacheside: row-change triggers installed");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cacheside: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    // A reload runs exactly the loading above: file, env, flags, validation, then the
    // mappings' queries prepared.
    let reload = cacheside::reload::Source {
        file: config_path(&args),
        load: {
            let args = args.clone();
            Box::new(move || load(&args))
        },
    };
    match runtime.block_on(cacheside::app::run(
        validated,
        cacheside::shutdown::signal(),
        Some(reload),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "cacheside stopped");
            ExitCode::FAILURE
        }
    }
}
