//! Secrets come from the environment or from a file the environment names,
//! never from the command line, where `ps` would show them: `NAME`, or
//! `NAME_FILE` holding the secret (trimmed, as a mounted secret often ends
//! in a newline).

use std::ffi::OsString;

use anyhow::{bail, Context, Result};

/// The secrets tallyd reads, by the name of their variable.
pub const STRIPE_WEBHOOK_SECRET: &str = "STRIPE_WEBHOOK_SECRET";
pub const PADDLE_WEBHOOK_SECRET: &str = "PADDLE_WEBHOOK_SECRET";
pub const STRIPE_SECRET_KEY: &str = "STRIPE_SECRET_KEY";
pub const TALLY_ALERT_SECRET: &str = "TALLY_ALERT_SECRET";

/// For `--help`: where `serve` and `worker` find their secrets.
pub const SERVE_HELP: &str = "\
Secrets are read from the environment only, each from NAME or from a file named by NAME_FILE:
  STRIPE_WEBHOOK_SECRET   Stripe webhook signing secrets, comma-separated (several while rotating)
  PADDLE_WEBHOOK_SECRET   Paddle webhook signing secrets, comma-separated
  STRIPE_SECRET_KEY       Stripe secret key, for sending usage reports
  TALLY_ALERT_SECRET      Standard Webhooks signing secret (whsec_<base64>), for alerts (--alert-url)";

pub const WORKER_HELP: &str = "\
Secrets are read from the environment only, from NAME or from a file named by NAME_FILE:
  STRIPE_SECRET_KEY       Stripe secret key, for sending usage reports
  TALLY_ALERT_SECRET      Standard Webhooks signing secret (whsec_<base64>), for alerts (--alert-url)";

/// The secret `name`, from the process environment.
pub fn from_env(name: &str) -> Result<Option<String>> {
    read(name, |variable| std::env::var_os(variable))
}

/// The secret `name` from `name` or from the file `name_FILE` names, as
/// `env` gives variables. An empty variable counts as unset.
pub fn read(name: &str, env: impl Fn(&str) -> Option<OsString>) -> Result<Option<String>> {
    let file_variable = format!("{name}_FILE");
    let set = |variable: &str| env(variable).filter(|value| !value.is_empty());
    match (set(name), set(&file_variable)) {
        (Some(_), Some(_)) => bail!("both {name} and {file_variable} are set: set one"),
        (Some(value), None) => {
            let value = value
                .into_string()
                .map_err(|_| anyhow::anyhow!("{name} is not valid UTF-8"))?;
            Ok(Some(value))
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "reading {name} from {file_variable}={}",
                    std::path::Path::new(&path).display()
                )
            })?;
            let secret = text.trim();
            if secret.is_empty() {
                bail!("{file_variable} names an empty file");
            }
            Ok(Some(secret.to_string()))
        }
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn a_secret_comes_from_its_variable_or_its_file() {
        assert_eq!(read("S", env(&[])).unwrap(), None);
        assert_eq!(read("S", env(&[("S", "")])).unwrap(), None);
        assert_eq!(
            read("S", env(&[("S", "whsec_a")])).unwrap().as_deref(),
            Some("whsec_a")
        );
        let path = std::env::temp_dir().join(format!("tallyd-secret-{}", std::process::id()));
        std::fs::File::create(&path)
            .and_then(|mut file| file.write_all(b"  sk_test_file\n"))
            .unwrap();
        let from_file = read("S", env(&[("S_FILE", path.to_str().unwrap())]));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(from_file.unwrap().as_deref(), Some("sk_test_file"));
    }

    #[test]
    fn both_set_or_an_unreadable_file_is_an_error() {
        let both = read("S", env(&[("S", "a"), ("S_FILE", "/etc/hostname")])).unwrap_err();
        assert_eq!(both.to_string(), "both S and S_FILE are set: set one");
        let missing = read("S", env(&[("S_FILE", "/nonexistent/secret")])).unwrap_err();
        assert!(
            format!("{missing:#}").contains("S_FILE=/nonexistent/secret"),
            "{missing:#}"
        );
    }
}
