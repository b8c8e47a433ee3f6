//! The proxy under test, as its own process.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

/// `proxy-child` mode: kiln-proxy configured from `KILN_*` variables, as the
/// real binary is, with the default (info) logging to stderr.
pub async fn run_proxy() -> anyhow::Result<()> {
    let _logs = kiln_proxy::logging::init();
    let mut config = kiln_proxy::Config::default();
    config.apply_env(|k| std::env::var(k).ok())?;
    kiln_proxy::run(config, Arc::new(kiln_proxy::filter::NoFilters)).await
}

pub struct ProxyChild {
    child: tokio::process::Child,
    addr: String,
}

impl ProxyChild {
    /// `log_filter` is the child's RUST_LOG (the proxy's default is `info`).
    pub async fn start(upstream: &str, log_filter: &str) -> anyhow::Result<ProxyChild> {
        ProxyChild::start_with(upstream, log_filter, &[]).await
    }

    /// As [`ProxyChild::start`], with more variables for the child (traces).
    pub async fn start_with(
        upstream: &str,
        log_filter: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<ProxyChild> {
        ProxyChild::start_exe(&std::env::current_exe()?, upstream, log_filter, env).await
    }

    /// As [`ProxyChild::start_with`], with the proxy of another build of this
    /// benchmark (`exe proxy-child`), e.g. a baseline.
    pub async fn start_exe(
        exe: &std::path::Path,
        upstream: &str,
        log_filter: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<ProxyChild> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = tokio::process::Command::new(exe)
            .arg("proxy-child")
            .env("KILN_LISTEN", &addr)
            .env("RUST_LOG", log_filter)
            // The proxy's own worker threads, e.g. to compare 1 with the default (one per core).
            .envs(std::env::var("BENCH_PROXY_WORKERS").map(|n| ("TOKIO_WORKER_THREADS", n)))
            .env("KILN_UPSTREAM", upstream)
            // Admission must not queue the benchmark's 64 (or 1000 idle) clients.
            .env("KILN_LIMITS_MAX_IN_FLIGHT", "4096")
            .env("KILN_LIMITS_MAX_QUEUE", "64")
            .env("KILN_LIMITS_IDLE_TIMEOUT_S", "600")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            // Logs are written (a pipe would be the same syscalls) and dropped.
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot re-run this benchmark binary as the proxy")?;
        let proxy = ProxyChild { child, addr };
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = client
                .get(format!("{}/healthz/ready", proxy.url()))
                .send()
                .await
                && r.status() == 200
            {
                return Ok(proxy);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("the proxy child did not become ready within 5 s")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// CPU time (user + system) the proxy process has used so far.
    pub fn cpu(&self) -> anyhow::Result<Duration> {
        let pid = self.child.id().context("proxy child exited")?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let after = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("bad /proc/PID/stat")?;
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Ok(Duration::from_micros(ticks * 1_000_000 / hz))
    }

    /// CPU time the proxy's live threads have used so far, in nanoseconds
    /// (each thread's `/proc/PID/task/TID/schedstat`): the clock-tick
    /// resolution of [`ProxyChild::cpu`] (10 ms) is too coarse for a few µs
    /// per request. Threads that have exited are not counted.
    pub fn cpu_ns(&self) -> anyhow::Result<Duration> {
        let pid = self.child.id().context("proxy child exited")?;
        let mut total = 0u64;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let stat = std::fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(Duration::from_nanos(total))
    }

    /// Resident memory of the proxy process, in bytes.
    pub fn rss(&self) -> anyhow::Result<u64> {
        let pid = self.child.id().context("proxy child exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .context("no VmRSS in /proc/PID/status")?;
        Ok(kb * 1024)
    }
}
