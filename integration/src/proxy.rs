//! Legate started in process from a YAML string, through `legate::app::build`.
//!
//! The YAML is a template: `${NAME}` placeholders are filled with [`Yaml::set`] (typically
//! with test upstreams' addresses), and every placeholder must be filled. Listeners and the
//! admin listener should use `127.0.0.1:0`; [`Proxy::addr`] and [`Proxy::admin`] give the
//! real ports. Dropping a [`Proxy`] stops it at once; [`Proxy::shutdown`] drains first.

use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use legate::app::App;

/// A config template with `${NAME}` placeholders.
#[derive(Debug, Clone)]
pub struct Yaml(String);

/// Starts a config template.
pub fn yaml(template: &str) -> Yaml {
    Yaml(template.to_owned())
}

impl Yaml {
    /// Replaces every `${name}` with `value`.
    pub fn set(self, name: &str, value: impl Display) -> Yaml {
        Yaml(self.0.replace(&format!("${{{name}}}"), &value.to_string()))
    }

    /// The filled text; fails if a placeholder is left.
    pub fn text(&self) -> Result<&str> {
        if let Some(start) = self.0.find("${") {
            let rest = &self.0[start..];
            let end = rest.find('}').map_or(rest.len(), |e| e + 1);
            bail!("placeholder {} was not set", &rest[..end]);
        }
        Ok(&self.0)
    }
}

impl From<&str> for Yaml {
    fn from(text: &str) -> Yaml {
        yaml(text)
    }
}

/// Parses and checks a config, as the proxy would; errors list every problem.
pub fn parse(text: &str) -> Result<legate::config::Checked> {
    legate::config::parse(text).map_err(|errors| anyhow!("invalid test config:\n{errors}"))
}

/// A running in-process proxy.
#[derive(Debug)]
pub struct Proxy {
    app: Option<App>,
}

impl Proxy {
    /// Parses, validates and starts `config`.
    pub fn start(config: impl Into<Yaml>) -> Result<Proxy> {
        let config = config.into();
        let text = config.text()?;
        let parsed = parse(text)?;
        let app = legate::app::build(parsed, legate::config::version_of(text))
            .context("starting legate in process")?;
        Ok(Proxy { app: Some(app) })
    }

    /// The running app; panics after [`Proxy::shutdown`] or [`Proxy::take`].
    pub fn app(&self) -> &App {
        self.app.as_ref().expect("the proxy was shut down")
    }

    /// Takes the app out (e.g. to shut it down on another task); the handle is then empty.
    pub fn take(&mut self) -> App {
        self.app.take().expect("the proxy was shut down")
    }

    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.app()
            .listener_addr(name)
            .unwrap_or_else(|| panic!("legate has no listener named {name:?}"))
    }

    /// The bound admin address.
    pub fn admin(&self) -> SocketAddr {
        self.app()
            .admin_addr()
            .expect("the admin listener is running")
    }

    /// The bound probe listener address (the config must have `probes`).
    pub fn probes(&self) -> SocketAddr {
        self.app()
            .probes_addr()
            .expect("the config has a probe listener")
    }

    /// Waits until `/ready` answers 200 (clusters warmed), polling it for at most 10 s.
    pub async fn wait_ready(&self) -> Result<()> {
        let admin = self.admin();
        for _ in 0..500 {
            if let Ok(reply) = crate::client::get(admin, "admin", "/ready").await {
                if reply.status == 200 {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("legate's /ready did not answer 200 within 10s")
    }

    /// Applies a new config (a hot swap), returning its version.
    pub fn apply(&self, config: impl Into<Yaml>) -> Result<String> {
        let config = config.into();
        let text = config.text()?;
        let version = legate::config::version_of(text);
        self.app()
            .apply(parse(text)?, version.clone())
            .context("applying config")?;
        Ok(version)
    }

    /// Graceful shutdown; returns whether everything drained before `timeout`.
    pub async fn shutdown(&mut self, timeout: Duration) -> bool {
        self.take().shutdown(timeout).await
    }
}
