//! `--log-format pretty|json` and `RUST_LOG`, to stderr (stdout carries command output).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

/// The format chosen at start-up; `rlhf run` passes it on to its children.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

pub fn format() -> LogFormat {
    *FORMAT.get().unwrap_or(&LogFormat::Pretty)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

pub fn init(format: LogFormat) {
    let _ = FORMAT.set(format);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,hf_hub=off"));
    // Colours only on a terminal, so piped logs stay greppable.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    // A panic anywhere (an actor's handler, a blocking task) is logged at error level with its
    // message and place, in the chosen format, before the process goes down.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        tracing::error!(thread = thread.name().unwrap_or("unnamed"), %location, "panicked: {message}");
    }));
}
