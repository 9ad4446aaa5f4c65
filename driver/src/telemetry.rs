//! Structured logs with tracing: human-readable text or JSON lines, filtered
//! by `RUST_LOG` (default `info`). Nothing tallyd logs carries a secret, an
//! API key or a signature.

use tracing_subscriber::filter::{Directive, LevelFilter};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init(format: LogFormat) {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (as in tests that start several servers) keeps the first.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The filter `rust_log` (a `RUST_LOG` value) describes, with tokio_postgres
/// held at `info` at most: at `debug` it logs every statement's parameters,
/// which carry API key hashes and event payloads.
pub fn filter(rust_log: Option<&str>) -> EnvFilter {
    let held = rust_log.map(hold_tokio_postgres);
    let filter = held
        .as_deref()
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // A directive of the user's for tokio_postgres itself is already held;
    // else one is added when anything is more verbose than info (so that
    // `RUST_LOG=warn` keeps tokio_postgres at warn).
    let named = held
        .iter()
        .flat_map(|held| held.split(','))
        .any(|directive| directive.split('=').next() == Some(TOKIO_POSTGRES));
    let verbose = filter
        .max_level_hint()
        .is_some_and(|level| level > LevelFilter::INFO);
    if verbose && !named {
        let directive: Directive = format!("{TOKIO_POSTGRES}=info")
            .parse()
            .expect("a valid directive");
        filter.add_directive(directive)
    } else {
        filter
    }
}

const TOKIO_POSTGRES: &str = "tokio_postgres";

/// `RUST_LOG` with each directive for tokio_postgres or a module of it that
/// is more verbose than info brought down to info.
fn hold_tokio_postgres(rust_log: &str) -> String {
    rust_log
        .split(',')
        .map(|directive| {
            let (target, level) = directive.rsplit_once('=').unwrap_or((directive, "trace"));
            let path = target.split('[').next().unwrap_or("").trim();
            let ours = path == TOKIO_POSTGRES || path.starts_with("tokio_postgres::");
            let verbose = level
                .trim()
                .parse::<LevelFilter>()
                .is_ok_and(|level| level > LevelFilter::INFO);
            if ours && verbose {
                format!("{target}=info")
            } else {
                directive.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use tracing::Level;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    fn enabled(rust_log: Option<&str>, target_is_tokio_postgres: bool, level: Level) -> bool {
        let subscriber = tracing_subscriber::registry().with(filter(rust_log));
        tracing::subscriber::with_default(subscriber, || match (target_is_tokio_postgres, level) {
            (true, Level::DEBUG) => {
                tracing::enabled!(target: "tokio_postgres::query", Level::DEBUG)
            }
            (true, _) => tracing::enabled!(target: "tokio_postgres::connection", Level::INFO),
            (false, Level::DEBUG) => tracing::enabled!(target: "tallyd::worker", Level::DEBUG),
            (false, _) => tracing::enabled!(target: "tallyd::worker", Level::INFO),
        })
    }

    #[test]
    fn tokio_postgres_stays_at_info_whatever_rust_log_says() {
        for rust_log in [
            "debug",
            "trace",
            "tokio_postgres",
            "tokio_postgres=trace",
            "info,tokio_postgres::query=debug",
            "debug,tokio_postgres=debug",
        ] {
            assert!(!enabled(Some(rust_log), true, Level::DEBUG), "{rust_log}");
        }
        assert!(enabled(Some("debug"), true, Level::INFO));
        assert!(enabled(Some("debug"), false, Level::DEBUG));
        assert!(!enabled(Some("warn"), true, Level::INFO));
        assert!(!enabled(
            Some("debug,tokio_postgres=warn"),
            true,
            Level::INFO
        ));
        assert!(!enabled(None, false, Level::DEBUG));
        assert!(enabled(None, false, Level::INFO));
    }
}
