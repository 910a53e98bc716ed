//! The `legate` binary: parse the command line, load the config, run until a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

use legate::{app, apply, config, upgrade};

/// The exit status after SIGTERM when `runtime.drain_timeout` cut connections or sessions
/// that were still open (0 means everything finished).
const EXIT_DRAIN_CUT: u8 = 2;

/// `legate --version`: the release and the revision it was built from.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("LEGATE_REVISION"),
    ")"
);

#[derive(Parser)]
#[command(name = "legate", version = LONG_VERSION, about = "A sidecar service-mesh proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file. SIGHUP reloads it, SIGTERM drains, SIGINT exits at once.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Format of Legate's own log on stderr (the access log goes to stdout).
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Write this process's pid here once it serves (an upgrade's new process rewrites
        /// it); removed at exit if it still names this process.
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Upgrade the binary of the `legate run --pid-file` process named in PID_FILE (SIGUSR2)
    /// and wait until its new process serves.
    Upgrade {
        #[arg(long)]
        pid_file: PathBuf,
        /// How long to wait for the new process.
        #[arg(long, default_value = "70s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Check a config file and print every problem found.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
        /// `text` (one problem per line, on stderr) or `json` (one document on stdout:
        /// `valid`, `version`, and `errors`/`warnings` with line, path, entry, kind, message).
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
    },
    /// For local development: write every certificate, key and CA file the config names but
    /// lacks, issued by a local CA (legate-dev-ca.pem). Existing files are left alone.
    DevCert {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReportFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The program name under which this binary is the control plane: the container image ships
/// one binary, with `legate-xds` a link to `legate`, so the code both share is there once.
const XDS_PROGRAM: &str = "legate-xds";

fn main() -> ExitCode {
    if invoked_as(XDS_PROGRAM) {
        return legate_xds::cli::main();
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config, format } => validate(&config, format),
        Command::DevCert { config } => dev_cert(&config),
        Command::Run {
            config,
            log_format,
            pid_file,
        } => {
            init_tracing(log_format);
            run(config, pid_file)
        }
        Command::Upgrade { pid_file, timeout } => {
            match legate::pidfile::upgrade(&pid_file, timeout) {
                Ok((old, new)) => {
                    println!("upgraded: pid {old} handed over to pid {new}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("upgrade failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Whether this process was started under the file name `program` (`argv[0]`).
fn invoked_as(program: &str) -> bool {
    std::env::args_os()
        .next()
        .is_some_and(|arg0| std::path::Path::new(&arg0).file_name() == Some(program.as_ref()))
}

/// Prints a config's problems, one per line, and fails.
fn invalid(path: &str, errors: &[config::ConfigError]) -> ExitCode {
    eprintln!("{path}: {} problem(s)", errors.len());
    for e in errors {
        eprintln!("{path}: {e}");
    }
    ExitCode::FAILURE
}

fn dev_cert(path: &std::path::Path) -> ExitCode {
    use legate::devcert::{self, Outcome};
    let config = match config::load_file(path) {
        Ok((config, _)) => config,
        Err(config::LoadError::Invalid { path, errors }) => return invalid(&path, &errors.0),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let outcomes = match devcert::write_missing(&config) {
        Ok(outcomes) => outcomes,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let mut ca = None;
    for outcome in &outcomes {
        match outcome {
            Outcome::CaCreated { cert, key } => {
                println!("created the local CA: {cert} (key {key})");
                ca = Some(cert.clone());
            }
            Outcome::Issued { what, paths, names } => {
                println!(
                    "{what}: wrote {} for {}",
                    paths.join(" and "),
                    names.join(", ")
                );
            }
            Outcome::CaCopied { what, path } => {
                println!("{what}: wrote {path} (the local CA)");
            }
            Outcome::Kept { what, paths } => {
                println!("{what}: kept {} (exists)", paths.join(" and "));
            }
        }
    }
    if outcomes.is_empty() {
        println!("{}: names no TLS files", path.display());
    }
    if let Some(ca) = ca {
        println!("clients trust the local CA with, e.g., curl --cacert {ca}");
    }
    ExitCode::SUCCESS
}

/// What `legate validate` found: problems that make the file unusable, and warnings.
struct Report {
    version: Option<String>,
    errors: Vec<config::ConfigError>,
    warnings: Vec<config::ConfigError>,
    /// The file could not be read at all.
    unreadable: Option<String>,
}

fn validate(path: &std::path::Path, format: ReportFormat) -> ExitCode {
    let report = check_file(path);
    let valid = report.errors.is_empty() && report.unreadable.is_none();
    let shown = path.display();
    match format {
        ReportFormat::Text => {
            if let Some(e) = &report.unreadable {
                eprintln!("{e}");
            } else if !valid {
                return invalid(&shown.to_string(), &report.errors);
            }
            for w in &report.warnings {
                eprintln!("{shown}: warning: {w}");
            }
            if let Some(version) = report.version.as_deref().filter(|_| valid) {
                println!("{shown}: ok (version {version})");
            }
        }
        ReportFormat::Json => {
            let problems = |list: &[config::ConfigError]| -> Vec<serde_json::Value> {
                list.iter()
                    .map(|e| {
                        serde_json::json!({
                            "line": e.line,
                            "path": e.path.to_string(),
                            "entry": e.entry.as_ref().map(|en| en.resource_name()),
                            "kind": e.kind.as_str(),
                            "message": e.message,
                        })
                    })
                    .collect()
            };
            let mut errors = problems(&report.errors);
            if let Some(e) = &report.unreadable {
                errors.push(serde_json::json!({
                    "line": null, "path": "", "entry": null, "kind": "read", "message": e,
                }));
            }
            let doc = serde_json::json!({
                "file": shown.to_string(),
                "valid": valid,
                "version": report.version.filter(|_| valid),
                "errors": errors,
                "warnings": problems(&report.warnings),
            });
            println!("{doc}");
        }
    }
    if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Reads, parses and checks `path` and the files it names, each problem with its line.
fn check_file(path: &std::path::Path) -> Report {
    match config::load_file(path) {
        Ok((config, text)) => {
            let mut files = apply::check::files(&config);
            config::locate(&text, &mut files.errors);
            config::locate(&text, &mut files.warnings);
            Report {
                version: Some(config::version_of(&text)),
                errors: files.errors,
                warnings: files.warnings,
                unreadable: None,
            }
        }
        Err(config::LoadError::Invalid { errors, .. }) => Report {
            version: None,
            errors: errors.0,
            warnings: Vec::new(),
            unreadable: None,
        },
        Err(e) => Report {
            version: None,
            errors: Vec::new(),
            warnings: Vec::new(),
            unreadable: Some(e.to_string()),
        },
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// How long a new process started by an upgrade may take to load its config and serve.
const UPGRADE_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

fn run(path: PathBuf, pid_file: Option<PathBuf>) -> ExitCode {
    // What an upgrade starts again: this binary's path as started and the same arguments.
    let exe = started_as();
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    match legate::resources::raise_open_file_limit() {
        Ok(Some(n)) => tracing::info!(open_files = n, "open-file limit"),
        Ok(None) => tracing::info!("open-file limit: unlimited"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    // Started by an upgrade: the running process's sockets come first.
    let (receiver, inherited) = match upgrade::Receiver::from_env() {
        None => (None, upgrade::Inherited::default()),
        Some(Ok((receiver, inherited))) => (Some(receiver), inherited),
        Some(Err(e)) => {
            error!("cannot take over from the process being upgraded: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (config, text) = match config::load_file(&path) {
        Ok(loaded) => loaded,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let app = match app::build_with(config, config::version_of(&text), inherited) {
        Ok(app) => app,
        Err(app::BuildError::Apply(app::ApplyError::Invalid(mut errors))) => {
            config::locate(&text, &mut errors.0);
            error!("{} is invalid:\n{errors}", path.display());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start control runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Signals are handled from here on: a SIGHUP or SIGUSR2 right after READY (or after an
    // upgrade's handover) must not take the default action, which ends the process.
    let _runtime_context = runtime.enter();
    let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut usr2)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined2()),
    ) else {
        error!("cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    let pid = std::process::id();
    // After an upgrade the old process writes this pid, once the handover has succeeded:
    // `legate upgrade` must never see a pid that could still be given up.
    if let (Some(file), None) = (&pid_file, &receiver) {
        if let Err(e) = legate::pidfile::write(file, pid) {
            error!("cannot write the pid file {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    }
    match receiver {
        // The old process tells the service manager this one is the service now.
        Some(receiver) => {
            if let Err(e) = receiver.ready() {
                error!("cannot tell the process being upgraded that this one serves: {e}");
                return ExitCode::FAILURE;
            }
            info!(
                pid = std::process::id(),
                "serving on the upgraded process's sockets"
            );
        }
        // Before the watch starts: a change it catches up on is a reload after READY=1.
        None => legate::notify::ready(&config::version_of(&text)),
    }
    app.watch_config(&path);
    let pid_file_in_loop = pid_file.clone();
    let code = runtime.block_on(async move {
        let pid_file = pid_file_in_loop;
        loop {
            tokio::select! {
                _ = term.recv() => {
                    info!("SIGTERM: draining");
                    legate::notify::stopping();
                    return drain(app, &mut int).await;
                }
                _ = int.recv() => {
                    info!("SIGINT: exiting");
                    std::process::exit(130);
                }
                _ = hup.recv() => {
                    info!("SIGHUP: reloading {}", path.display());
                    let _ = app.reload_file(&path);
                }
                _ = usr2.recv() => {
                    info!("SIGUSR2: upgrading");
                    match upgrade(&app, exe.as_deref(), &args).await {
                        Ok(new_pid) => {
                            info!(new_pid, "upgraded: the new process serves; draining this one");
                            if let Some(file) = &pid_file {
                                if let Err(e) = legate::pidfile::write(file, new_pid) {
                                    error!("cannot write the new pid to {}: {e}", file.display());
                                }
                            }
                            legate::notify::handed_over(new_pid);
                            app.stop_admin();
                            return drain(app, &mut int).await;
                        }
                        Err(e) => {
                            error!("upgrade failed, this process serves on: {e}");
                            legate::notify::upgrade_failed(&e.to_string());
                            // Rewritten, same pid: `legate upgrade` learns it failed.
                            if let Some(file) = &pid_file {
                                let _ = legate::pidfile::write(file, pid);
                            }
                        }
                    }
                }
            }
        }
    });
    if let Some(file) = &pid_file {
        legate::pidfile::remove_if_ours(file, pid);
    }
    info!(pid, code, "exiting");
    ExitCode::from(code)
}

/// The path this binary was started by: `argv[0]` made absolute against the working
/// directory at start, without following symlinks, so that an upgrade starts what the path
/// names now (a symlink moved to a new release, a file replaced). Without a `/` in `argv[0]`
/// (found on `PATH`), the file the kernel ran.
fn started_as() -> Option<PathBuf> {
    let arg0 = PathBuf::from(std::env::args_os().next()?);
    if arg0.components().count() > 1 || arg0.is_absolute() {
        return std::env::current_dir().ok().map(|cwd| cwd.join(arg0));
    }
    std::env::current_exe().ok()
}

/// Starts the binary again with this process's sockets ([`upgrade::hand_over`]).
async fn upgrade(
    app: &app::App,
    exe: Option<&std::path::Path>,
    args: &[std::ffi::OsString],
) -> Result<u32, String> {
    let exe = exe.ok_or("the path of this binary is unknown")?;
    let sockets = app
        .listening_sockets()
        .map_err(|e| format!("cannot copy the listening sockets: {e}"))?;
    upgrade::hand_over(exe, args, sockets, UPGRADE_LIMIT)
        .await
        .map_err(|e| e.to_string())
}

/// The graceful end: `runtime.drain_delay` serving on (SIGINT cuts it short), then the
/// drain up to `runtime.drain_timeout`. Exit 0, or [`EXIT_DRAIN_CUT`] when work was cut.
async fn drain(app: app::App, int: &mut tokio::signal::unix::Signal) -> u8 {
    let runtime = app.snapshot().config.runtime.clone();
    let delay = runtime.drain_delay.get();
    if !delay.is_zero() {
        tokio::select! {
            _ = app.drain_delay(delay) => {}
            _ = int.recv() => {
                info!("SIGINT: exiting");
                std::process::exit(130);
            }
        }
    }
    if app.shutdown(runtime.drain_timeout.get()).await {
        return 0;
    }
    // Work was cut: say so to the supervisor, not only in the log.
    EXIT_DRAIN_CUT
}
