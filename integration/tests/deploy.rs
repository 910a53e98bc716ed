//! The Kubernetes examples in `deploy/kubernetes/` hold together: every document parses, the
//! Legate config each ConfigMap embeds passes `legate validate`'s checks (with certificates
//! where the TLS Secret is mounted), Legate runs as a
//! native sidecar whose probes use the probe listener's port and paths, and the pod's grace
//! period covers `drain_delay + drain_timeout`.

use std::path::{Path, PathBuf};

use legate_integration::certs::Ca;
use serde::Deserialize;
use serde_yaml::Value;

/// Where the examples mount the TLS Secret; the test puts certificates for the config's
/// hosts there instead.
const TLS_MOUNT: &str = "/etc/legate-tls/";

fn manifests() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn port_of(address: &str) -> u64 {
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{address:?} has no port"))
}

#[test]
fn the_kubernetes_examples_hold_together() {
    let files = manifests();
    assert!(!files.is_empty(), "deploy/kubernetes/ has no *.yaml files");
    // A certificate for every host the examples serve over TLS, as their Secret would hold.
    let tls = tempfile::tempdir().expect("a temporary directory");
    let tls_dir = tls.path();
    Ca::new("Example CA")
        .and_then(|ca| ca.server(&["maps.wikimedia.org", "*.maps.wikimedia.org"]))
        .and_then(|leaf| leaf.write(tls_dir, "tls"))
        .expect("test certificates");
    for path in &files {
        let docs = documents(path);
        let at = path.display();
        let configs: Vec<legate::config::Config> = docs
            .iter()
            .filter(|d| d["kind"] == "ConfigMap")
            .filter_map(|d| d["data"]["legate.yaml"].as_str())
            .map(|text| {
                let text = text.replace(TLS_MOUNT, &format!("{}/", tls_dir.display()));
                let checked = legate::config::parse(&text)
                    .unwrap_or_else(|e| panic!("{at}: the embedded config is invalid:\n{e}"));
                let files = legate::apply::check::files(&checked);
                assert!(files.errors.is_empty(), "{at}: {:?}", files.errors);
                assert!(files.warnings.is_empty(), "{at}: {:?}", files.warnings);
                checked.into_config()
            })
            .collect();
        assert_eq!(configs.len(), 1, "{at}: one ConfigMap with legate.yaml");
        let config = &configs[0];
        let probes = config
            .probes
            .as_ref()
            .unwrap_or_else(|| panic!("{at}: the config has a probe listener"));
        let probe_port = port_of(&probes.listen);

        let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
        assert!(!deployments.is_empty(), "{at}: a Deployment");
        for deployment in deployments {
            let pod = &deployment["spec"]["template"]["spec"];
            let legate = pod["initContainers"]
                .as_sequence()
                .and_then(|c| c.iter().find(|c| c["name"] == "legate"))
                .unwrap_or_else(|| panic!("{at}: legate is an init container"));
            assert_eq!(
                legate["restartPolicy"], "Always",
                "{at}: a native sidecar (starts first, stops last)"
            );
            let args: Vec<&str> = legate["args"]
                .as_sequence()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            assert_eq!(args, ["run", "--config", "/etc/legate/legate.yaml"], "{at}");
            let mounted = legate["volumeMounts"]
                .as_sequence()
                .is_some_and(|m| m.iter().any(|m| m["mountPath"] == "/etc/legate"));
            assert!(mounted, "{at}: the ConfigMap is mounted at /etc/legate");

            for (probe, paths) in [
                ("startupProbe", ["/ready", "/healthz"]),
                ("readinessProbe", ["/ready", "/ready"]),
                ("livenessProbe", ["/healthz", "/healthz"]),
            ] {
                let get = &legate[probe]["httpGet"];
                assert_eq!(get["port"].as_u64(), Some(probe_port), "{at}: {probe} port");
                let path = get["path"].as_str().unwrap_or_default();
                assert!(paths.contains(&path), "{at}: {probe} path {path:?}");
            }
            let ports: Vec<u64> = legate["ports"]
                .as_sequence()
                .map(|p| {
                    p.iter()
                        .filter_map(|p| p["containerPort"].as_u64())
                        .collect()
                })
                .unwrap_or_default();
            assert!(
                ports.contains(&probe_port),
                "{at}: the probe port is declared"
            );
            for listener in &config.listeners {
                if !listener.listen.starts_with("127.") {
                    let port = port_of(&listener.listen);
                    assert!(
                        ports.contains(&port),
                        "{at}: port {port} of {} is declared",
                        listener.name
                    );
                }
            }

            if config.listeners.iter().any(|l| l.tls.is_some()) {
                let mount = TLS_MOUNT.trim_end_matches('/');
                let volume = legate["volumeMounts"]
                    .as_sequence()
                    .and_then(|m| m.iter().find(|m| m["mountPath"] == mount))
                    .and_then(|m| m["name"].as_str())
                    .unwrap_or_else(|| panic!("{at}: the TLS Secret is mounted at {mount}"));
                let from_secret = pod["volumes"]
                    .as_sequence()
                    .and_then(|v| v.iter().find(|v| v["name"] == volume))
                    .is_some_and(|v| v["secret"]["secretName"].is_string());
                assert!(from_secret, "{at}: {volume} is a Secret volume");
            }

            let grace = pod["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or_else(|| panic!("{at}: terminationGracePeriodSeconds is set"));
            let drain = config.runtime.drain_delay.get() + config.runtime.drain_timeout.get();
            assert!(
                grace as f64 > drain.as_secs_f64(),
                "{at}: a grace period of {grace}s cuts drain_delay + drain_timeout ({drain:?})"
            );
        }
    }
}
