//! The `legate` command line: `--version`, `validate` (exit codes and every problem reported
//! with its line and field path), `dev-cert`, and `run` refusing configs it cannot serve.
//!
//! Needs `cargo build -p legate --bin legate` first.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use legate_integration::process;

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

async fn validate(path: &Path) -> Result<(Option<i32>, String, String)> {
    validate_in(Path::new("."), path).await
}

/// `legate validate --config PATH` run in working directory `dir`.
async fn validate_in(dir: &Path, path: &Path) -> Result<(Option<i32>, String, String)> {
    let path = path.to_str().context("utf-8 path")?;
    let out = process::run_in(dir, &["validate", "--config", path]).await?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

const GOOD: &str = r#"admin: { listen: 127.0.0.1:9901 }
listeners:
  - { name: front, listen: 127.0.0.1:8080, http: { route_table: main } }
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes: [{ match: { prefix: / }, cluster: app }]
clusters:
  - { name: app, endpoints: ["10.0.0.1:80"] }
"#;

#[tokio::test]
async fn version_flag_prints_the_version() -> Result<()> {
    let out = process::run(&["--version"]).await?;

    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        format!("legate {} ({})", legate::VERSION, legate::REVISION)
    );
    // Built from a checkout, the revision is the commit's.
    if let Ok(git) = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
    {
        if git.status.success() {
            let head = String::from_utf8_lossy(&git.stdout).trim().to_owned();
            assert_eq!(legate::REVISION, head, "the binary was built from HEAD");
        }
    }
    Ok(())
}

/// An admin listener off loopback works, with a warning: it serves `POST /reload` and the
/// whole config to whoever reaches it.
#[tokio::test]
async fn validate_warns_about_an_admin_listener_beyond_loopback() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let text = GOOD.replace("127.0.0.1:9901", "0.0.0.0:9901");
    let path = write(dir.path(), "exposed.yaml", &text)?;

    let (code, stdout, stderr) = validate(&path).await?;

    assert_eq!(code, Some(0), "a warning does not reject: {stderr}");
    assert!(stdout.contains("ok (version"), "{stdout}");
    assert!(
        stderr.contains("warning: line 1: admin.listen: 0.0.0.0:9901 is not a loopback address"),
        "{stderr}"
    );
    assert!(stderr.contains("probes.listen"), "{stderr}");

    let (_, _, quiet) = validate(&write(dir.path(), "good.yaml", GOOD)?).await?;
    assert!(!quiet.contains("warning"), "{quiet}");
    Ok(())
}

#[tokio::test]
async fn validate_accepts_a_good_file_and_prints_its_version() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = write(dir.path(), "good.yaml", GOOD)?;

    let (code, stdout, stderr) = validate(&path).await?;

    assert_eq!(code, Some(0), "stderr: {stderr}");
    let version = legate::config::version_of(GOOD);
    assert!(
        stdout.contains(&format!("ok (version {version})")),
        "{stdout}"
    );
    Ok(())
}

#[tokio::test]
async fn validate_reports_every_problem_with_its_line_and_path() -> Result<()> {
    // One problem in each of three sections.
    let text = r#"admin: { listen: 127.0.0.1 }
listeners:
  - name: front
    listen: 127.0.0.1:8080
    http: { route_table: mian }
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - match: { prefix: / }
            cluster: app
clusters:
  - name: app
    endpoints: ["10.0.0.1"]
"#;
    let dir = tempfile::tempdir()?;
    let path = write(dir.path(), "bad.yaml", text)?;

    let (code, _, stderr) = validate(&path).await?;

    assert_ne!(code, Some(0), "an invalid file fails validation");
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
    for expected in [
        "line 1: admin.listen: \"127.0.0.1\" has no port",
        "line 5: listeners[0].http.route_table: unknown route table \"mian\" (did you mean \"main\"?)",
        "line 15: clusters[0].endpoints[0].address: \"10.0.0.1\" has no port",
    ] {
        assert!(stderr.contains(expected), "{expected:?} missing from:\n{stderr}");
    }
    Ok(())
}

/// `--format json`: one document on stdout, every problem with its line, path, entry and
/// kind; the exit status as with text.
#[tokio::test]
async fn validate_format_json_gives_every_problem_with_line_path_and_kind() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let json = |out: &std::process::Output| -> Result<serde_json::Value> {
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&out.stdout)))
    };
    let bad = write(
        dir.path(),
        "bad.yaml",
        &GOOD
            .replace("127.0.0.1:9901", "127.0.0.1")
            .replace("route_table: main", "route_table: mian"),
    )?;
    let out = process::run(&["validate", "--format", "json", "--config", path_str(&bad)?]).await?;
    assert_eq!(out.status.code(), Some(1));
    let doc = json(&out)?;
    assert_eq!(doc["valid"], false, "{doc}");
    assert!(doc["version"].is_null(), "{doc}");
    let errors = doc["errors"].as_array().context("errors")?;
    assert_eq!(errors.len(), 2, "{doc}");
    assert_eq!(errors[0]["line"], 1, "{doc}");
    assert_eq!(errors[0]["path"], "admin.listen");
    assert_eq!(errors[0]["kind"], "invalid");
    assert_eq!(errors[1]["line"], 3);
    assert_eq!(errors[1]["path"], "listeners[0].http.route_table");
    assert_eq!(errors[1]["entry"], "listeners[front]");
    assert_eq!(errors[1]["kind"], "unknown_reference");
    assert!(
        errors[1]["message"]
            .as_str()
            .is_some_and(|m| m.contains("did you mean \"main\"")),
        "{doc}"
    );

    // A file the config names, checked once the config itself is sound.
    let missing_cert = write(
        dir.path(),
        "tls.yaml",
        &GOOD.replace(
            "http: { route_table: main } }",
            "http: { route_table: main }, tls: { certificates: [{ cert: /nonexistent.crt, key: /nonexistent.key }] } }",
        ),
    )?;
    let out = process::run(&[
        "validate",
        "--format",
        "json",
        "--config",
        path_str(&missing_cert)?,
    ])
    .await?;
    let doc = json(&out)?;
    assert_eq!(out.status.code(), Some(1), "{doc}");
    assert_eq!(doc["errors"][0]["kind"], "file", "{doc}");
    assert!(doc["errors"][0]["line"].is_u64(), "{doc}");

    let good = write(dir.path(), "good.yaml", GOOD)?;
    let out = process::run(&["validate", "--format", "json", "--config", path_str(&good)?]).await?;
    assert_eq!(out.status.code(), Some(0));
    let doc = json(&out)?;
    assert_eq!(doc["valid"], true, "{doc}");
    assert!(doc["version"].is_string(), "{doc}");
    assert_eq!(doc["errors"], serde_json::json!([]));

    let out = process::run(&[
        "validate",
        "--format",
        "json",
        "--config",
        path_str(&dir.path().join("absent.yaml"))?,
    ])
    .await?;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)?["errors"][0]["kind"], "read");
    Ok(())
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().context("utf-8 path")
}

#[tokio::test]
async fn validate_names_an_unknown_key() -> Result<()> {
    let text = GOOD.replace("http: { route_table: main }", "htp: { route_table: main }");
    let dir = tempfile::tempdir()?;
    let path = write(dir.path(), "typo.yaml", &text)?;

    let (code, _, stderr) = validate(&path).await?;

    assert_ne!(code, Some(0));
    assert!(stderr.contains("line 3: listeners[0].htp:"), "{stderr}");
    assert!(stderr.contains("unknown field `htp`"), "{stderr}");
    assert!(stderr.contains("did you mean `http`?"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn validate_fails_on_a_missing_file() -> Result<()> {
    let dir = tempfile::tempdir()?;

    let (code, _, stderr) = validate(&dir.path().join("nope.yaml")).await?;

    assert_ne!(code, Some(0));
    assert!(stderr.contains("cannot read config file"), "{stderr}");
    Ok(())
}

/// Every example validates from a clone: `legate dev-cert` first writes the certificates an
/// example names (none are shipped), in a working directory of its own.
#[tokio::test]
async fn config_examples_pass_legate_validate_after_dev_cert() -> Result<()> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config-examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples)? {
        let path = entry?.path();
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            continue;
        }
        let work = tempfile::tempdir()?;
        let text = path.to_str().context("utf-8 path")?;
        let out = process::run_in(work.path(), &["dev-cert", "--config", text]).await?;
        assert!(
            out.status.success(),
            "dev-cert on {text}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (code, stdout, stderr) = validate_in(work.path(), &path).await?;
        assert_eq!(code, Some(0), "{text}:\n{stderr}");
        assert!(stdout.contains("ok (version "), "{stdout}");
        checked += 1;
    }
    assert!(checked > 0, "no examples found in {}", examples.display());
    Ok(())
}

#[tokio::test]
async fn run_refuses_an_invalid_config() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let text = GOOD.replace("cluster: app", "cluster: nothing");
    let path = write(dir.path(), "bad.yaml", &text)?;

    let out = process::run(&["run", "--config", path.to_str().context("utf-8")?]).await?;

    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown cluster"), "{stderr}");
    assert!(stderr.contains("nothing"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn run_fails_to_start_when_a_listener_port_is_taken() -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = taken.local_addr()?.port();
    let text = GOOD
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:9901", "127.0.0.1:0");
    let dir = tempfile::tempdir()?;
    let path = write(dir.path(), "taken.yaml", &text)?;

    let out = process::run(&["run", "--config", path.to_str().context("utf-8")?]).await?;

    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot bind"), "{stderr}");
    drop(taken);
    Ok(())
}
