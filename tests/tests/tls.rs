//! TLS to Postgres: tallyd's connections honour `sslmode` and `sslrootcert`
//! as libpq does. Each test starts a throwaway cluster of its own (with or
//! without `ssl = on`, its certificate made at test time for 127.0.0.1 and
//! localhost) and stops it when done; it needs no tally extension and no
//! `TALLY_TEST_DATABASE_URL`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Where clusters live: a directory the postgres user can reach (not /root).
const RUN_DIR: &str = "/var/tmp/tally";

fn is_root() -> bool {
    let output = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

/// `program` run as the user that runs Postgres: postgres when we are root
/// (Postgres refuses to run as root), else ourselves.
fn pg_user_command(program: &str) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", program]);
        command
    } else {
        Command::new(program)
    }
}

fn as_pg_user(program: &str, args: &[&str]) {
    let output = pg_user_command(program)
        .args(args)
        .output()
        .expect("run a Postgres command");
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A certificate authority, and the PEM files it made in a directory.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    /// A server certificate for 127.0.0.1 and localhost: (certificate, key) PEM.
    fn server(&self) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A Postgres cluster of this test's own, stopped and removed on drop (even
/// when the test fails).
struct Cluster {
    dir: PathBuf,
    port: u16,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Cluster {
    /// Start a cluster; with `ssl`, serving the certificate `ca` made.
    fn start(ssl: Option<&Ca>) -> Cluster {
        assert!(
            Path::new(PG_BIN).join("initdb").exists(),
            "{PG_BIN}/initdb is missing: install Postgres 15 (scripts/test.sh does)"
        );
        std::fs::create_dir_all(RUN_DIR).unwrap();
        if is_root() {
            // Anyone may make a directory here, as scripts/lib.sh leaves it.
            assert!(Command::new("chmod")
                .args(["1777", RUN_DIR])
                .status()
                .unwrap()
                .success());
        }
        let name = format!(
            "tls-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let cluster = Cluster {
            dir: Path::new(RUN_DIR).join(name),
            port: free_port(),
        };
        let dir = cluster.dir.to_str().unwrap().to_string();
        let data = format!("{dir}/data");
        as_pg_user("mkdir", &["-p", &data]);
        as_pg_user(
            &format!("{PG_BIN}/initdb"),
            &["-D", &data, "-U", "postgres", "--auth=trust", "--no-sync"],
        );
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {dir} -c fsync=off",
            cluster.port
        );
        if let Some(ca) = ssl {
            let (cert, key) = ca.server();
            // Written by us, then copied by the postgres user so that it owns
            // the key (Postgres refuses a key others can read).
            let staging = tempfile::tempdir().unwrap();
            for (file, text) in [("server.crt", &cert), ("server.key", &key)] {
                std::fs::write(staging.path().join(file), text).unwrap();
            }
            make_readable(staging.path());
            for file in ["server.crt", "server.key"] {
                let from = staging.path().join(file);
                as_pg_user("cp", &[from.to_str().unwrap(), &format!("{dir}/{file}")]);
            }
            as_pg_user("chmod", &["600", &format!("{dir}/server.key")]);
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key"
            ));
        }
        as_pg_user(
            &format!("{PG_BIN}/pg_ctl"),
            &[
                "-D",
                &data,
                "-l",
                &format!("{dir}/postgres.log"),
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "start",
            ],
        );
        cluster
    }

    fn url(&self, host: &str, query: &str) -> String {
        format!(
            "postgresql://postgres@{host}:{}/postgres?{query}",
            self.port
        )
    }
}

/// Let the postgres user read what root staged in `dir`.
fn make_readable(dir: &Path) {
    if is_root() {
        assert!(Command::new("chmod")
            .args(["-R", "a+rX", dir.to_str().unwrap()])
            .status()
            .unwrap()
            .success());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let stopped = pg_user_command(&format!("{PG_BIN}/pg_ctl"))
            .args([
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
        if !matches!(&stopped, Ok(output) if output.status.success()) {
            eprintln!("could not stop the cluster in {}", self.dir.display());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `url` connects, and if so whether the session is encrypted.
async fn connect(url: &str) -> Result<bool, String> {
    let client = tallyd::db::connect(url)
        .await
        .map_err(|error| format!("{error:#}"))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|error| error.to_string())?;
    Ok(row.get(0))
}

fn write_ca(dir: &Path, name: &str, ca: &Ca) -> String {
    let path = dir.join(name);
    std::fs::write(&path, ca.issuer.pem()).unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test]
async fn verify_full_checks_the_chain_and_the_host_name() {
    let ca = Ca::new("tally test CA");
    let cluster = Cluster::start(Some(&ca));
    let files = tempfile::tempdir().unwrap();
    let root = write_ca(files.path(), "ca.pem", &ca);
    let other_root = write_ca(files.path(), "other.pem", &Ca::new("someone else's CA"));

    let full = format!("sslmode=verify-full&sslrootcert={root}");
    assert_eq!(connect(&cluster.url("127.0.0.1", &full)).await, Ok(true));

    // The certificate does not name this host (reached at 127.0.0.1 all the same).
    let elsewhere = cluster.url("db.example.com", &format!("{full}&hostaddr=127.0.0.1"));
    let refused = connect(&elsewhere).await.unwrap_err();
    assert!(
        refused.contains("cannot connect") && refused.contains("not valid for name"),
        "{refused}"
    );
    // verify-ca checks the chain only.
    let chain_only = elsewhere.replace("verify-full", "verify-ca");
    assert_eq!(connect(&chain_only).await, Ok(true));

    let strangers = format!("sslmode=verify-full&sslrootcert={other_root}");
    let refused = connect(&cluster.url("127.0.0.1", &strangers)).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|error| error.to_lowercase().contains("issuer")),
        "{refused:?}"
    );
    let refused =
        connect(&cluster.url("127.0.0.1", &strangers.replace("verify-full", "verify-ca"))).await;
    assert!(refused.is_err(), "{refused:?}");
    // require with a root certificate checks the chain, as libpq does.
    let refused =
        connect(&cluster.url("127.0.0.1", &strangers.replace("verify-full", "require"))).await;
    assert!(refused.is_err(), "{refused:?}");

    // Without a root certificate, require and prefer encrypt but do not check.
    assert_eq!(
        connect(&cluster.url("127.0.0.1", "sslmode=require")).await,
        Ok(true)
    );
    assert_eq!(
        connect(&cluster.url("127.0.0.1", "sslmode=prefer")).await,
        Ok(true)
    );
    assert_eq!(
        connect(&cluster.url("127.0.0.1", "sslmode=disable")).await,
        Ok(false)
    );
}

#[tokio::test]
async fn require_needs_a_server_with_tls_and_prefer_falls_back() {
    let cluster = Cluster::start(None);
    let refused = connect(&cluster.url("127.0.0.1", "sslmode=require")).await;
    assert!(refused.is_err(), "{refused:?}");
    let refused = connect(&cluster.url("127.0.0.1", "sslmode=verify-full")).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(
        connect(&cluster.url("127.0.0.1", "sslmode=prefer")).await,
        Ok(false)
    );
    // No sslmode is prefer, as with libpq.
    assert_eq!(
        connect(&cluster.url("127.0.0.1", "application_name=t")).await,
        Ok(false)
    );
}
