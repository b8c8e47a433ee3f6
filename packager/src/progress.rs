//! Download progress for people: indicatif bars (one per large blob and a
//! total with bytes, rate and ETA) on a terminal, plain log lines otherwise
//! (CI logs and pipes must not fill up with carriage-return redraws).

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Blobs at least this large get their own bar; smaller ones only move the total.
const OWN_BAR_FROM: u64 = 16 << 20;
/// Blobs at least this large get start and end lines in plain mode.
const PLAIN_LINES_FROM: u64 = 1 << 20;
/// How often plain mode reports a large blob's progress.
const PLAIN_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// indicatif bars.
    Bars,
    /// One log line per event on stderr.
    Plain,
    /// Nothing.
    Quiet,
}

/// Progress of a whole pull; cheap to clone.
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    mode: ProgressMode,
    multi: Option<MultiProgress>,
    /// Created by the first `add_total`, so no empty "0 B/0 B" bar is drawn first.
    total: OnceLock<ProgressBar>,
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Progress {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bars,
            ProgressMode::Auto => ProgressMode::Plain,
            other => other,
        };
        let multi = (mode == ProgressMode::Bars)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress {
            inner: Arc::new(Inner {
                mode,
                multi,
                total: OnceLock::new(),
            }),
        }
    }

    pub fn mode(&self) -> ProgressMode {
        self.inner.mode
    }

    /// Adds bytes that will be downloaded to the total.
    pub fn add_total(&self, bytes: u64) {
        let Some(multi) = &self.inner.multi else {
            return;
        };
        let total = self.inner.total.get_or_init(|| {
            let bar = multi.add(ProgressBar::new(0));
            bar.set_style(style(
                "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            ));
            bar.set_prefix("total");
            bar
        });
        total.inc_length(bytes);
    }

    /// A line for the user, printed above any bars.
    pub fn println(&self, line: &str) {
        match (&self.inner.mode, &self.inner.multi) {
            (ProgressMode::Quiet, _) => {}
            (_, Some(multi)) => {
                let _ = multi.println(line);
            }
            _ => eprintln!("{line}"),
        }
    }

    /// Starts reporting one blob of `size` bytes, `already` of which are on disk.
    pub fn blob(&self, label: &str, size: u64, already: u64) -> BlobProgress {
        let bar = match &self.inner.multi {
            Some(multi) if size >= OWN_BAR_FROM => {
                let bar = multi.insert_from_back(1, ProgressBar::new(size));
                bar.set_style(style("{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"));
                bar.set_prefix(short_label(label));
                bar.set_position(already);
                bar.reset_eta();
                Some(bar)
            }
            _ => None,
        };
        let plain = self.inner.mode == ProgressMode::Plain && size >= PLAIN_LINES_FROM;
        if plain {
            let resumed = if already > 0 {
                format!(", resuming at {}", HumanBytes(already))
            } else {
                String::new()
            };
            eprintln!("pulling {label} ({}{resumed})", HumanBytes(size));
        }
        BlobProgress {
            inner: Arc::new(BlobInner {
                label: label.to_string(),
                size,
                done: AtomicU64::new(already),
                fetched: AtomicU64::new(0),
                started: Instant::now(),
                last_report: Mutex::new(Instant::now()),
                bar,
                total: self.inner.total.get().cloned(),
                plain,
            }),
        }
    }

    /// Removes the bars; call once at the end.
    pub fn finish(&self) {
        if let Some(total) = self.inner.total.get() {
            total.finish_and_clear();
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn short_label(label: &str) -> String {
    let hex = label.strip_prefix("sha256:").unwrap_or(label);
    hex.chars().take(12).collect()
}

/// Progress of one blob; shared by the tasks downloading its parts.
#[derive(Clone)]
pub struct BlobProgress {
    inner: Arc<BlobInner>,
}

struct BlobInner {
    label: String,
    size: u64,
    done: AtomicU64,
    fetched: AtomicU64,
    started: Instant,
    last_report: Mutex<Instant>,
    bar: Option<ProgressBar>,
    total: Option<ProgressBar>,
    plain: bool,
}

impl BlobProgress {
    /// `n` more bytes arrived.
    pub fn inc(&self, n: u64) {
        let inner = &self.inner;
        let done = inner.done.fetch_add(n, Ordering::Relaxed) + n;
        inner.fetched.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &inner.bar {
            bar.inc(n);
        }
        if let Some(total) = &inner.total {
            total.inc(n);
        }
        if inner.plain
            && let Ok(mut last) = inner.last_report.try_lock()
            && last.elapsed() >= PLAIN_INTERVAL
        {
            *last = Instant::now();
            let percent = done.saturating_mul(100) / inner.size.max(1);
            eprintln!(
                "pulling {}: {percent}% ({}/{}) at {}/s",
                inner.label,
                HumanBytes(done),
                HumanBytes(inner.size),
                HumanBytes(rate(
                    inner.fetched.load(Ordering::Relaxed),
                    inner.started.elapsed()
                ))
            );
        }
    }

    /// Bytes fetched over the network for this blob in this run.
    pub fn fetched(&self) -> u64 {
        self.inner.fetched.load(Ordering::Relaxed)
    }

    /// The blob is complete and verified.
    pub fn finish(&self) {
        let inner = &self.inner;
        if let Some(bar) = &inner.bar {
            bar.finish_and_clear();
        }
        if inner.plain {
            let elapsed = inner.started.elapsed();
            eprintln!(
                "pulled {} ({}) in {:.1}s, {}/s, digest verified",
                inner.label,
                HumanBytes(inner.size),
                elapsed.as_secs_f64(),
                HumanBytes(rate(inner.fetched.load(Ordering::Relaxed), elapsed))
            );
        }
    }

    /// The blob failed; remove its bar (the error says what happened).
    pub fn abandon(&self) {
        if let Some(bar) = &self.inner.bar {
            bar.finish_and_clear();
        }
    }
}

fn rate(bytes: u64, elapsed: Duration) -> u64 {
    (bytes as f64 / elapsed.as_secs_f64().max(1e-3)) as u64
}
