//! What every treecast binary does the same way: logging to stderr, a
//! runtime, a TOML config file, errors printed with their causes.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Logs to stderr at `RUST_LOG` (default `info`), runs `main` on a
/// multi-threaded runtime, prints an error with its causes, and turns the
/// outcome into the exit code.
pub fn run_main(main: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    run_main_logging_to(None, main)
}

/// [`run_main`], with the log written to `log_file` (appended, created with
/// its directory) instead of stderr when given: for a command whose
/// terminal shows its own progress, such as the demo.
pub fn run_main_logging_to(
    log_file: Option<&Path>,
    main: impl Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    // The SRT library logs every malformed datagram and every late packet
    // at WARN: a flood of garbage must not become a flood of log lines. The
    // origin's own SRT module logs refusals and failures once each.
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,srt_protocol=error"))
    };
    match log_file.map(open_log) {
        None => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .init(),
        Some(Ok(file)) => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .init(),
        Some(Err(e)) => {
            eprintln!("error: cannot open the log file: {e}");
            return ExitCode::FAILURE;
        }
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Installs the Ctrl-C (SIGINT) and SIGTERM handlers now, and returns
/// what resolves at the first of them: the two ways an operator, a
/// service manager or a script asks a process to stop. A server calls it
/// before it announces its address, so that a signal sent as soon as the
/// address shows is never met by the default action, which kills the
/// process without its shutdown (a test that did just that failed once
/// in CI).
pub fn shutdown_listener() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// Resolves at the first Ctrl-C (SIGINT) or SIGTERM from the first poll
/// on ([`shutdown_listener`] installs the handlers at once).
pub async fn shutdown_signal() -> std::io::Result<()> {
    shutdown_listener()?.await;
    Ok(())
}

/// A config's `origin_key` (hex, as `origin key` prints it), checked.
pub fn pinned_origin_key(hex: Option<&str>) -> Result<Option<crate::OriginPublicKey>, ConfigError> {
    hex.map(|k| {
        k.trim()
            .parse()
            .map_err(|e| ConfigError::Invalid(format!("origin_key: {e}")))
    })
    .transpose()
}

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (with line and column).
        message: String,
    },
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed.
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Reads and parses a TOML config file.
pub fn load_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigFileError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// An error and all its sources, joined with `: `.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The error and those of its causes that its message does not already
/// include (our error messages often quote their cause).
pub fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// A flag's help text ending with the default it takes from the binary's
/// config struct: flags default to the config (file, else `Default`), so
/// `--help` quotes the one place defaults live instead of a copy of them.
pub fn help_with_default(what: &str, default: &impl std::fmt::Display) -> String {
    format!("{what} [default: {default}]")
}
