//! `kiln-bench-plugin-calls`: what the request plugins cost, in process, with
//! no sockets: the quickstart's policy (`api-key`, `model-allowlist`,
//! `token-cap`, configured as `vs-nginx.sh` configures them) run on the
//! small `/api/chat` request of that bench, on one thread and then on two
//! at once (as the proxy's two runtime threads run them: memory mapping
//! changes then cost the other core too). Prints the process's CPU time per
//! request for the chain and for each plugin alone.
//!
//!   scripts/build-plugins && cargo run --release -p kiln-bench-proxy --bin kiln-bench-plugin-calls [-- N]
//!
//! `PLUGINS_DIR=DIR` takes the plugin files from DIR instead of target/plugins.
//!
//! For a profile: `perf record -g target/release/kiln-bench-plugin-calls`.

use kiln_bench_common::{example_plugin, process_cpu};
use kiln_proxy::filter::{FilterRequest, RouteKind, Verdict};
use kiln_proxy::plugins::{PluginOptions, load_chain};
use serde_json::json;

const KEY: &str = "bench-key-0123456789";

fn request() -> FilterRequest {
    let body = br#"{"model":"gemma3:4b","messages":[{"role":"user","content":"Why is the sky blue?"}],"stream":false}"#;
    FilterRequest {
        route: RouteKind::OllamaChat,
        method: "POST".into(),
        path: "/api/chat".into(),
        headers: vec![
            ("host".into(), "127.0.0.1:8080".into()),
            ("content-type".into(), "application/json".into()),
            ("authorization".into(), format!("Bearer {KEY}")),
            ("content-length".into(), body.len().to_string()),
        ],
        body: body.to_vec(),
        model: Some("gemma3:4b".into()),
    }
}

fn main() -> anyhow::Result<()> {
    let n: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    let key_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(KEY.as_bytes()));
    let plugins = [
        example_plugin(
            "api-key",
            json!({"keys": [{"name": "bench", "sha256": key_sha}]}),
        )?,
        example_plugin("model-allowlist", json!({"allow": ["gemma3:4b"]}))?,
        example_plugin("token-cap", json!({"max_tokens": 512}))?,
    ];
    let cache =
        std::env::temp_dir().join(format!("kiln-bench-plugin-calls-{}", std::process::id()));
    let options = PluginOptions {
        cache_dir: cache.clone(),
        ..PluginOptions::default()
    };
    let mut rows = vec![("chain of 3".to_owned(), plugins.to_vec())];
    for p in &plugins {
        rows.push((format!("{} alone", p.name), vec![p.clone()]));
    }
    println!("{n} requests per row; process CPU time per request");
    println!("{:>22}  {:>9}  {:>9}", "", "1 thread", "2 threads");
    for (name, specs) in rows {
        let stage = load_chain(&specs, &options)?;
        let chain = stage.chain();
        let mut cells = Vec::new();
        for threads in [1, 2] {
            let per_thread = n / threads;
            let run = || -> anyhow::Result<()> {
                for _ in 0..per_thread {
                    let verdict = chain.run(request());
                    anyhow::ensure!(
                        matches!(verdict, Verdict::Forward(_)),
                        "{name}: the request was refused"
                    );
                }
                Ok(())
            };
            run()?; // warm-up: pool slots, memory images
            let start = process_cpu();
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..threads).map(|_| scope.spawn(run)).collect();
                workers
                    .into_iter()
                    .try_for_each(|w| w.join().expect("bench thread panicked"))
            })?;
            let per = (process_cpu() - start) / (per_thread * threads);
            cells.push(format!("{:7.2} µs", per.as_secs_f64() * 1e6));
        }
        println!("{name:>22}  {}  {}", cells[0], cells[1]);
    }
    let _ = std::fs::remove_dir_all(cache);
    Ok(())
}
