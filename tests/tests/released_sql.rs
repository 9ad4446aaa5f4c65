//! The guards of released SQL (`scripts/check_released.py`, run by
//! scripts/test.sh) catch what they are for: an edit of a released script,
//! committed or not, and a kept install script that is not what the code
//! generates. Each case runs the guard on a clone of this repository.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|error| panic!("{program}: {error}"))
}

/// A clone of the committed repository, or None outside a git checkout.
fn clone() -> Option<(tempdir::Dir, PathBuf)> {
    if !run(&root(), "git", &["rev-parse", "--git-dir"])
        .status
        .success()
    {
        eprintln!("not a git checkout: skipped");
        return None;
    }
    let dir = tempdir::Dir::new();
    let copy = dir.path().join("tally");
    let cloned = run(
        dir.path(),
        "git",
        &["clone", "-q", root().to_str().unwrap(), "tally"],
    );
    assert!(cloned.status.success(), "{cloned:?}");
    Some((dir, copy))
}

fn guard(repo: &Path, generated: Option<&str>) -> Output {
    let version = env!("CARGO_PKG_VERSION");
    let mut args = vec!["scripts/check_released.py", version];
    args.extend(generated);
    run(repo, "python3", &args)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn released_sql_as_committed_passes() {
    let Some((_dir, repo)) = clone() else { return };
    let kept = format!("sql/released/tally--{}.sql", env!("CARGO_PKG_VERSION"));
    let output = guard(&repo, Some(&kept));
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn an_edited_release_fails_committed_or_not() {
    let Some((_dir, repo)) = clone() else { return };
    let script = repo.join("sql/tally--0.1.0--0.2.0.sql");
    let mut text = std::fs::read_to_string(&script).unwrap();
    text.push_str("\n-- a later fix\n");
    std::fs::write(&script, text).unwrap();
    let output = guard(&repo, None);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("sql/tally--0.1.0--0.2.0.sql was changed after its release"),
        "{}",
        stderr(&output)
    );

    let commit = [
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-qam",
        "edit",
    ];
    assert!(run(&repo, "git", &commit).status.success());
    assert!(!guard(&repo, None).status.success());
}

#[test]
fn a_kept_install_script_unlike_the_generated_one_fails() {
    let Some((_dir, repo)) = clone() else { return };
    let kept = repo.join(format!(
        "sql/released/tally--{}.sql",
        env!("CARGO_PKG_VERSION")
    ));
    let generated = repo.join("generated.sql");
    let text = std::fs::read_to_string(kept).unwrap();
    std::fs::write(
        &generated,
        text.replacen("CREATE TABLE tally.metrics", "CREATE TABLE tally.metric", 1),
    )
    .unwrap();
    let output = guard(&repo, Some("generated.sql"));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("differs from what the code generates"),
        "{}",
        stderr(&output)
    );
}

/// A temporary directory, removed when dropped.
mod tempdir {
    use std::path::{Path, PathBuf};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            let path = std::env::temp_dir().join(format!(
                "tally-released-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
