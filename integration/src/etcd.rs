//! Real etcd for the end-to-end tests: a cluster of members on loopback, each with its data in
//! one temporary directory, started by the test and killed when dropped (Debian's
//! `etcd-server`, installed by `.ci/run`).
//!
//! etcd must be told its client and peer addresses before it starts (every member names every
//! other's), so the ports come from [`crate::process::free_port`].

use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use tokio::process::{Child, Command};

use crate::process::free_port;

/// How long the cluster may take to elect a leader and answer.
const READY: Duration = Duration::from_secs(30);

/// One member.
struct Member {
    name: String,
    client: String,
    child: Option<Child>,
}

/// The members of one cluster.
pub struct EtcdCluster {
    _dir: tempfile::TempDir,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one reports itself healthy.
    pub async fn start(n: usize) -> Result<EtcdCluster> {
        let dir = tempfile::tempdir()?;
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("m{i}");
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = std::fs::File::create(dir.path().join(format!("{name}.log")))?;
            let child = Command::new("etcd")
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.path().join(&name))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "legate-test"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("starting etcd (install Debian's etcd-server, as .ci/run does)")?;
            members.push(Member {
                name,
                client: format!("127.0.0.1:{client}"),
                child: Some(child),
            });
        }
        let cluster = EtcdCluster { _dir: dir, members };
        for m in &cluster.members {
            crate::eventually(READY, || async {
                let reply = crate::client::get(m.client.parse()?, "127.0.0.1", "/health").await?;
                let text = reply.text();
                ensure!(text.contains("\"true\""), "{}: {text}", m.name);
                Ok(())
            })
            .await
            .with_context(|| format!("etcd member {} never became healthy", m.name))?;
        }
        Ok(cluster)
    }

    /// The client addresses of the members, `host:port`.
    pub fn members(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    /// `etcd://` and every member.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.members().join(","))
    }

    /// Kills member `i` (SIGKILL) and waits for it to be gone.
    pub async fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut child) = self.members.get_mut(i).and_then(|m| m.child.take()) {
            child.kill().await.context("killing an etcd member")?;
        }
        Ok(())
    }
}
