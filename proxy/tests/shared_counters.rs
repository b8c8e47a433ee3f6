//! Limits that hold across instances: three real kiln-proxy processes in
//! front of one Ollama emulator, counting on one real `redis-server` (started
//! here on a free loopback port, with a password; once with TLS and a
//! throwaway CA made with the openssl CLI). Requests for one caller are
//! spread over the three; the plugins are the unchanged `rate-limit` and
//! `token-budget` examples (built by scripts/build-plugins).

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const PASSWORD: &str = "test-pass-7f3a";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn wasm(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/plugins/{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-plugins",
        path.display()
    );
    path
}

/// A TLS server certificate for 127.0.0.1 signed by a fresh CA.
struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    fn make() -> TlsFiles {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("openssl (scripts/setup installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=kiln test CA",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        TlsFiles { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A `redis-server` on a loopback port with a password, no persistence.
struct Redis {
    port: u16,
    tls: Option<PathBuf>,
    child: Option<Child>,
}

impl Redis {
    fn start(tls: Option<&TlsFiles>) -> Redis {
        let mut r = Redis {
            port: free_port(),
            tls: tls.map(|t| t.dir.path().to_path_buf()),
            child: None,
        };
        r.restart();
        r
    }

    /// Starts (again) on the same port, with an empty dataset.
    fn restart(&mut self) {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        match &self.tls {
            None => cmd.args(["--port", &port]),
            Some(d) => cmd
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(d.join("server.pem"))
                .arg("--tls-key-file")
                .arg(d.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(d.join("ca.pem")),
        };
        let child = cmd
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/setup installs it)");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < end,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One kiln-proxy process; its JSON log goes to a file the test can read.
struct Proxy {
    child: Child,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    fn spawn(upstream: &str, config: &str, env: &[(&str, String)]) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("kiln-proxy.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.path().join("stderr.log");
        let listen = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln-proxy"));
        cmd.arg("--config")
            .arg(&config_path)
            .args(["--listen", &listen, "--upstream", upstream])
            .env(
                "KILN_PLUGIN_CACHE_DIR",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugin-cache-tests"),
            )
            .env("KILN_COUNTERS_PASSWORD", PASSWORD)
            // These tests are about what is counted, not how fast: a debug
            // build on a busy machine gets room for its Redis round trips.
            .env("KILN_COUNTERS_TIMEOUT_MS", "100")
            .env("KILN_PLUGIN_DEADLINE_MS", "1000")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("run kiln-proxy");
        Proxy {
            child,
            base: format!("http://{listen}"),
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn count_in_log(&self, text: &str) -> usize {
        self.log().lines().filter(|l| l.contains(text)).count()
    }

    /// The log once it has a line with `text` (log lines are written by a
    /// background thread), or the test fails.
    async fn log_with(&self, text: &str) -> String {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if log.contains(text) {
                return log;
            }
            assert!(Instant::now() < end, "no {text:?} in the log:\n{log}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_ready(client: &reqwest::Client, proxies: &[Proxy]) {
    for p in proxies {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = client
                .get(format!("{}/healthz/ready", p.base))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ok {
                break;
            }
            assert!(
                Instant::now() < end,
                "kiln-proxy never became ready:\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn config(plugin: &str, plugin_config: &str, counters: &str) -> String {
    format!(
        "[counters]\n{counters}\n\n[[plugins]]\nname = \"{plugin}\"\npath = {:?}\n[plugins.config]\n{plugin_config}\n",
        wasm(&plugin.replace('-', "_"))
    )
}

async fn generate(client: &reqwest::Client, proxy: &Proxy, caller: &str) -> (u16, Value) {
    let resp = client
        .post(format!("{}/api/generate", proxy.base))
        .header("x-kiln-caller", caller)
        .json(&json!({"model": "gemma3:4b", "prompt": "why is the sky blue", "stream": false, "options": {"num_predict": 4}}))
        .send()
        .await
        .expect("request to kiln-proxy");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Sends `n` requests as `caller`, round robin over `proxies`; returns how
/// many were admitted (200). Anything but 200 or 429 fails the test.
async fn admitted(client: &reqwest::Client, proxies: &[Proxy], caller: &str, n: usize) -> usize {
    let mut ok = 0;
    for i in 0..n {
        let (status, body) = generate(client, &proxies[i % proxies.len()], caller).await;
        match status {
            200 => ok += 1,
            429 => {}
            s => {
                // Log lines are written by a background thread.
                tokio::time::sleep(Duration::from_millis(300)).await;
                panic!(
                    "request {i}: status {s}: {body}\n{}",
                    proxies[i % proxies.len()].log()
                )
            }
        }
        // token-budget adds an answer's tokens when the answer has ended;
        // let that land before the next instance reads the count.
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    ok
}

struct Setup {
    emulator: ollama_emulator::Emulator,
    _models: tempfile::TempDir,
    client: reqwest::Client,
}

async fn setup() -> Setup {
    let models = harness::models_dir();
    let emulator = ollama_emulator::Emulator::start(ollama_emulator::Config {
        models_dir: Some(models.path().to_path_buf()),
        num_parallel: 8,
        token_delay: Duration::from_micros(200),
        ..Default::default()
    })
    .await
    .expect("start emulator");
    Setup {
        emulator,
        _models: models,
        client: harness::http_client(),
    }
}

impl Setup {
    async fn proxies(&self, n: usize, config: &str, env: &[(&str, String)]) -> Vec<Proxy> {
        let proxies: Vec<Proxy> = (0..n)
            .map(|_| Proxy::spawn(&self.emulator.url(), config, env))
            .collect();
        wait_ready(&self.client, &proxies).await;
        proxies
    }
}

/// rate-limit with `requests_per_minute = burst = L`: L requests at once,
/// then one per 60/L s; the test sends its requests well within that.
const L: usize = 5;
const RATE: &str = "requests_per_minute = 5\nburst = 5";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_rate_limit_on_redis() {
    let s = setup().await;
    let redis = Redis::start(None);
    let shared = s
        .proxies(
            3,
            &config("rate-limit", RATE, &format!("url = {:?}", redis.url())),
            &[],
        )
        .await;
    assert_eq!(
        admitted(&s.client, &shared, "alice", 3 * L + 3).await,
        L,
        "a limit of {L} admits {L} in total across three instances"
    );
    // The same without a shared backend: each instance counts alone.
    let alone = s
        .proxies(3, &config("rate-limit", RATE, "backend = \"local\""), &[])
        .await;
    assert_eq!(
        admitted(&s.client, &alone, "alice", 3 * L + 3).await,
        3 * L,
        "in process, each of three instances admits {L}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_token_budget_on_redis() {
    let s = setup().await;
    let redis = Redis::start(None);
    // The tokens of one answer, as token-budget counts them (prompt + completion).
    let probe = s
        .proxies(
            1,
            &config("token-budget", "budget = 1000000", "backend = \"local\""),
            &[],
        )
        .await;
    let (status, body) = generate(&s.client, &probe[0], "probe").await;
    assert_eq!(status, 200, "{body}");
    let per_answer =
        body["prompt_eval_count"].as_u64().unwrap() + body["eval_count"].as_u64().unwrap();
    drop(probe);
    // Room for exactly 4 answers per window: the 4th crosses the budget.
    let budget = 3 * per_answer + 1;
    let cfg = |counters: &str| {
        config(
            "token-budget",
            &format!("budget = {budget}\nwindow_s = 3600"),
            counters,
        )
    };
    let shared = s
        .proxies(3, &cfg(&format!("url = {:?}", redis.url())), &[])
        .await;
    assert_eq!(
        admitted(&s.client, &shared, "bob", 15).await,
        4,
        "one budget across three instances"
    );
    let alone = s.proxies(3, &cfg("backend = \"local\""), &[]).await;
    assert_eq!(
        admitted(&s.client, &alone, "bob", 15).await,
        12,
        "in process, three budgets"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_open_per_instance_and_shared_counting_resumes() {
    let s = setup().await;
    let mut redis = Redis::start(None);
    let proxies = s
        .proxies(
            3,
            &config(
                "rate-limit",
                RATE,
                &format!("url = {:?}\non_failure = \"fail_open\"", redis.url()),
            ),
            &[],
        )
        .await;
    assert_eq!(admitted(&s.client, &proxies, "before", 3 * L).await, L);

    redis.kill();
    // Requests keep flowing, each instance counting alone: 3L in all.
    assert_eq!(
        admitted(&s.client, &proxies, "during", 3 * L + 6).await,
        3 * L
    );
    for p in &proxies {
        assert_eq!(
            p.count_in_log("shared counters unreachable"),
            1,
            "one warning per outage, not per request:\n{}",
            p.log()
        );
    }
    let metrics = s
        .client
        .get(format!("{}/metrics", proxies[0].base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("kiln_counter_backend_up 0"), "{metrics}");
    assert!(
        !metrics.contains("kiln_counter_fallbacks_total 0\n"),
        "{metrics}"
    );

    redis.restart();
    // The backend is retried by itself; a new caller is counted once again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        admitted(&s.client, &proxies, "after", 3 * L).await,
        L,
        "shared counting resumed after Redis came back"
    );
    for p in &proxies {
        assert_eq!(
            p.count_in_log("shared counters reachable again"),
            1,
            "{}",
            p.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_with_fail_closed_fails_the_plugin_call() {
    let s = setup().await;
    let mut redis = Redis::start(None);
    let proxies = s
        .proxies(
            1,
            &config(
                "rate-limit",
                RATE,
                &format!("url = {:?}\non_failure = \"fail_closed\"", redis.url()),
            ),
            &[],
        )
        .await;
    assert_eq!(generate(&s.client, &proxies[0], "a").await.0, 200);
    redis.kill();
    let (status, body) = generate(&s.client, &proxies[0], "a").await;
    assert_eq!(
        status, 500,
        "the plugin-failure status (on_error = deny): {body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("rate-limit"),
        "{body}"
    );
    proxies[0]
        .log_with("on_failure = \\\"fail_closed\\\"")
        .await;
    redis.restart();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        generate(&s.client, &proxies[0], "a").await.0,
        200,
        "recovered by itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_a_password_from_the_environment() {
    let s = setup().await;
    let tls = TlsFiles::make();
    let redis = Redis::start(Some(&tls));
    // URL and CA from the environment, as Cloud Run's secret-backed env gives them.
    let env = [
        ("KILN_COUNTERS_URL", redis.url()),
        (
            "KILN_COUNTERS_CA_FILE",
            tls.path("ca.pem").display().to_string(),
        ),
        ("KILN_COUNTERS_ON_FAILURE", "fail_closed".to_owned()),
    ];
    let proxies = s.proxies(2, &config("rate-limit", RATE, ""), &env).await;
    assert_eq!(admitted(&s.client, &proxies, "tls", 2 * L + 2).await, L);
    // A CA that did not sign the server's certificate is refused.
    let other = TlsFiles::make();
    let env = [
        ("KILN_COUNTERS_URL", redis.url()),
        (
            "KILN_COUNTERS_CA_FILE",
            other.path("ca.pem").display().to_string(),
        ),
        ("KILN_COUNTERS_ON_FAILURE", "fail_closed".to_owned()),
    ];
    let wrong = s.proxies(1, &config("rate-limit", RATE, ""), &env).await;
    assert_eq!(generate(&s.client, &wrong[0], "tls").await.0, 500);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Issue 13 item 5, through the binary: 1,000 requests, each from a new
/// caller with a 64 KB `X-Forwarded-For` (rate-limit keys callers by it, in
/// a window that never ends). In-process counters keep at most `max_keys`
/// keys of bounded size, so memory does not follow the callers, and the
/// last requests are as fast as the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_huge_caller_keys_keep_memory_bounded_and_requests_fast() {
    let s = setup().await;
    let proxies = s
        .proxies(
            1,
            &config("rate-limit", RATE, "backend = \"local\"\nmax_keys = 100"),
            &[],
        )
        .await;
    let p = &proxies[0];
    let huge = "7".repeat(64 << 10);
    let send = |i: usize| {
        let (client, url, forwarded) = (
            s.client.clone(),
            format!("{}/api/generate", p.base),
            format!("10.{}.{}.{}-{huge}", i >> 16, (i >> 8) & 255, i & 255),
        );
        async move {
            let started = Instant::now();
            let resp = client
                .post(url)
                .header("x-forwarded-for", forwarded)
                .json(&json!({"model": "gemma3:4b", "prompt": "hi", "stream": false, "options": {"num_predict": 1}}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "a new caller is never limited");
            resp.bytes().await.unwrap();
            started.elapsed()
        }
    };
    for i in 0..50 {
        send(1_000_000 + i).await; // warm-up: allocator arenas, connections
    }
    let before = rss_kib(p.child.id());
    let mut times = Vec::new();
    for i in 0..1000 {
        times.push(send(i).await);
    }
    let grown_mib = rss_kib(p.child.id()).saturating_sub(before) / 1024;
    let metrics = s
        .client
        .get(format!("{}/metrics", p.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kiln_counter_local_keys{plugin=\"rate-limit\"} 100"),
        "{metrics}"
    );
    // Kept whole, 1,000 keys of 64 KB would be 64 MiB.
    assert!(
        grown_mib < 24,
        "RSS grew {grown_mib} MiB over 1,000 callers"
    );
    let median = |t: &mut [Duration]| {
        t.sort();
        t[t.len() / 2]
    };
    let first = median(&mut times[..100].to_vec());
    let last = median(&mut times[900..].to_vec());
    assert!(
        last < first * 3 + Duration::from_millis(20),
        "median of the first 100 requests {first:?}, of the last 100 {last:?}"
    );
}
