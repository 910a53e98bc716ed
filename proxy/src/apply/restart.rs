//! Settings read once, at start: a reload that changes one applies everything else and says
//! which of these are not in effect until a restart.

use crate::config::model::{Admin, Probes, Xds};
use crate::config::Config;

/// The start-only settings of the config the process started with.
#[derive(Debug, Clone, PartialEq)]
pub struct AtStart {
    admin: Admin,
    probes: Option<Probes>,
    workers: Option<usize>,
    xds: Option<Xds>,
    node_id: Option<String>,
    node_cluster: Option<String>,
}

impl AtStart {
    pub fn of(config: &Config) -> Self {
        AtStart {
            admin: config.admin.clone(),
            probes: config.probes.clone(),
            workers: config.runtime.workers,
            xds: config.xds.clone(),
            node_id: config.node.id.clone(),
            node_cluster: config.node.cluster.clone(),
        }
    }

    /// The fields of `config` that differ from what the process started with, and so are
    /// not in effect.
    pub fn not_in_effect(&self, config: &Config) -> Vec<&'static str> {
        let mut fields = Vec::new();
        if config.admin != self.admin {
            fields.push("admin");
        }
        if config.probes != self.probes {
            fields.push("probes");
        }
        if config.runtime.workers != self.workers {
            fields.push("runtime.workers");
        }
        if config.xds != self.xds {
            fields.push("xds");
        }
        if config.node.id != self.node_id {
            fields.push("node.id");
        }
        if config.node.cluster != self.node_cluster {
            fields.push("node.cluster");
        }
        fields
    }
}
