//! Prometheus's own tools on what Legate exports: `promtool check metrics` on a scrape.

use anyhow::{ensure, Context as _, Result};

/// `promtool check metrics` (Prometheus's own checker) finds nothing wrong with `text`, and
/// no series appears twice (promtool does not look; Prometheus drops the second sample).
pub async fn check_metrics(text: &str) -> Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let mut seen = std::collections::HashSet::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = line.rsplit_once(' ').map_or(line, |(series, _)| series);
        ensure!(
            seen.insert(series),
            "series {series} appears twice in the scrape:\n{text}"
        );
    }
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run promtool ({e}): install prometheus (`apt-get install prometheus`, as .ci/run does)"
            )
        })?;
    let mut stdin = child.stdin.take().context("promtool's stdin")?;
    stdin.write_all(text.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}\n--- scrape ---\n{text}"
    );
    Ok(())
}

/// The value of sample `name` in a Prometheus text scrape whose labels include every pair
/// of `labels`; `None` when no sample matches. Samples whose label values contain `,` or
/// `}` are not read correctly (Legate's tests use none).
pub fn value(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (set, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let has = |(k, v): &(&str, &str)| set.split(',').any(|p| p == format!("{k}=\"{v}\""));
        labels.iter().all(has).then(|| value.trim().parse().ok())?
    })
}
