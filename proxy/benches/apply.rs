//! Config swap cost: how long validating and applying a config with many clusters and
//! endpoints takes, and the memory it adds. Run with `cargo bench -p legate --bench apply`.

use std::time::{Duration, Instant};

use legate::{app, config};

fn config_text(clusters: usize, endpoints_per_cluster: usize, generation: usize) -> String {
    let mut s = String::from(
        "admin: { listen: 127.0.0.1:0 }\nruntime: { workers: 2 }\naccess_log: { enabled: false }\n\
         listeners:\n  - { name: front, listen: 127.0.0.1:0, http: { route_table: front } }\n\
         route_tables:\n  front:\n    virtual_hosts:\n",
    );
    for c in 0..clusters {
        s.push_str(&format!(
            "      - hosts: [svc{c}.example.org]\n        routes: [{{ match: {{ prefix: / }}, cluster: svc{c}, timeout: {}s }}]\n",
            5 + generation % 2
        ));
    }
    s.push_str("clusters:\n");
    for c in 0..clusters {
        s.push_str(&format!("  - name: svc{c}\n    endpoints:\n"));
        for e in 0..endpoints_per_cluster {
            let n = c * endpoints_per_cluster + e;
            let (a, b) = (n / 250, n % 250);
            s.push_str(&format!(
                "      - {{ address: \"10.{}.{a}.{}:8080\", weight: {} }}\n",
                64 + generation % 2,
                b + 1,
                1 + (n + generation) % 5
            ));
        }
    }
    s
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let dir = std::env::temp_dir().join(format!("legate-apply-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("legate.yaml");
    let base = config_text(1, 1, 0);
    std::fs::write(&file, &base).expect("write config");
    let (cfg, text) = config::load_file(&file).expect("base config");
    let app = app::build(cfg, config::version_of(&text)).expect("start");

    println!(
        "{:>9} {:>10} {:>12} {:>12} {:>14}",
        "clusters", "endpoints", "apply (ms)", "median (ms)", "RSS added"
    );
    for (clusters, per) in [(100, 10), (1_000, 1), (1_000, 10)] {
        let before = rss_kib();
        let mut times = Vec::new();
        for generation in 0..5 {
            std::fs::write(&file, config_text(clusters, per, generation)).expect("write");
            let started = Instant::now();
            app.reload_file(&file).expect("reload");
            times.push(started.elapsed());
        }
        let after = rss_kib();
        times.sort();
        let median: Duration = times[times.len() / 2];
        println!(
            "{clusters:>9} {:>10} {:>12.1} {:>12.1} {:>10} KiB",
            clusters * per,
            times[0].as_secs_f64() * 1000.0,
            median.as_secs_f64() * 1000.0,
            after.saturating_sub(before)
        );
        std::fs::write(&file, &base).expect("write");
        app.reload_file(&file).expect("reload back");
    }
    drop(app);
    let _ = std::fs::remove_dir_all(&dir);
}
