//! The plugin host, driven with small hand-written plugins (tests/support/fixtures.rs).

mod example_plugins;
mod support;

use kiln_proxy::filter::{FilterRequest, RequestFilter, RouteKind, Verdict};
use kiln_proxy::plugins::{OnError, PluginSpec};
use kiln_proxy::plugins::{PluginError, PluginOptions, PluginStage, load_chain};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::fixtures::{self, Behaviour};

fn options(dir: &Path) -> PluginOptions {
    PluginOptions {
        cache_dir: dir.join("cache"),
        max_concurrent_calls: 16,
        ..PluginOptions::default()
    }
}

fn spec(name: &str, path: &Path) -> PluginSpec {
    example_plugins::spec(name, path, serde_json::Value::Null)
}

fn chat(body: &str) -> FilterRequest {
    FilterRequest {
        route: RouteKind::OllamaChat,
        method: "POST".into(),
        path: "/api/chat".into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.as_bytes().to_vec(),
        model: None,
    }
}

fn stage(dir: &Path, specs: &[PluginSpec]) -> Arc<PluginStage> {
    load_chain(specs, &options(dir)).expect("plugins load")
}

fn run(stage: &PluginStage, request: FilterRequest) -> Verdict {
    stage.chain().run(request)
}

fn rejection(v: &Verdict) -> (u16, &str) {
    match v {
        Verdict::Reject {
            status, message, ..
        } => (*status, message.as_str()),
        Verdict::Forward(r) => panic!(
            "expected a rejection, got a forward of {:?}",
            String::from_utf8_lossy(&r.body)
        ),
    }
}

fn forwarded(v: Verdict) -> FilterRequest {
    match v {
        Verdict::Forward(r) => r,
        Verdict::Reject {
            status, message, ..
        } => panic!("expected a forward, got {status} {message}"),
    }
}

#[test]
fn plugin_allows_modifies_and_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let allow = fixtures::write(dir.path(), "allow", &Behaviour::Allow);
    let header = fixtures::write(dir.path(), "header", &Behaviour::SetHeader("x-tag", "on"));
    let reject = fixtures::write(dir.path(), "reject", &Behaviour::Reject(401, "no key"));

    let r = forwarded(run(
        &stage(dir.path(), &[spec("allow", &allow)]),
        chat("{}"),
    ));
    assert_eq!(r.body, b"{}");

    let r = forwarded(run(
        &stage(dir.path(), &[spec("header", &header)]),
        chat("{}"),
    ));
    assert!(
        r.headers.contains(&("x-tag".into(), "on".into())),
        "{:?}",
        r.headers
    );
    assert!(
        r.headers
            .contains(&("content-type".into(), "application/json".into()))
    );

    let v = run(&stage(dir.path(), &[spec("reject", &reject)]), chat("{}"));
    assert_eq!(rejection(&v), (401, "no key"));
}

#[test]
fn plugins_run_in_config_order_and_a_rejection_stops_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let a = fixtures::write(dir.path(), "a", &Behaviour::AppendToBody(b'a'));
    let b = fixtures::write(dir.path(), "b", &Behaviour::AppendToBody(b'b'));
    let no = fixtures::write(dir.path(), "no", &Behaviour::Reject(403, "stop"));

    let r = forwarded(run(
        &stage(dir.path(), &[spec("a", &a), spec("b", &b)]),
        chat("x"),
    ));
    assert_eq!(r.body, b"xab");
    let r = forwarded(run(
        &stage(dir.path(), &[spec("b", &b), spec("a", &a)]),
        chat("x"),
    ));
    assert_eq!(r.body, b"xba");

    let v = run(
        &stage(dir.path(), &[spec("a", &a), spec("no", &no), spec("b", &b)]),
        chat("x"),
    );
    assert_eq!(rejection(&v), (403, "stop"));
}

#[test]
fn plugin_runs_only_on_its_routes() {
    let dir = tempfile::tempdir().unwrap();
    let no = fixtures::write(dir.path(), "no", &Behaviour::Reject(403, "chat is closed"));
    let mut only_chat = spec("no", &no);
    only_chat.routes = Some(vec!["chat".into()]);
    let stage = stage(dir.path(), &[only_chat]);

    assert_eq!(rejection(&run(&stage, chat("{}"))).0, 403);
    let mut generate = chat("{}");
    generate.route = RouteKind::OllamaGenerate;
    forwarded(run(&stage, generate));
    let mut other = chat("{}");
    other.route = RouteKind::Other;
    forwarded(run(&stage, other));
}

#[test]
fn plugin_sees_its_config_and_can_refuse_it_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let echo = fixtures::write(dir.path(), "echo", &Behaviour::RejectWithConfig);
    let mut s = spec("echo", &echo);
    s.config = serde_json::json!({"keys": ["k1"]});
    let v = run(&stage(dir.path(), &[s]), chat("{}"));
    assert_eq!(rejection(&v), (403, r#"{"keys":["k1"]}"#));

    let picky = fixtures::write_bytes(
        dir.path(),
        "picky",
        &fixtures::core_module(&Behaviour::Allow, Some("keys must not be empty")),
    );
    let err = load_chain(&[spec("picky", &picky)], &options(dir.path()))
        .err()
        .expect("config refused");
    assert!(matches!(err, PluginError::Config { .. }), "{err}");
    assert!(err.to_string().contains("keys must not be empty"), "{err}");
}

#[test]
fn plugin_trap_fails_closed_and_the_next_request_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let trap = fixtures::write(dir.path(), "trap", &Behaviour::Trap);
    let stage = stage(dir.path(), &[spec("trap", &trap)]);
    let verdict = run(&stage, chat("{}"));
    let (status, message) = rejection(&verdict);
    assert_eq!(status, 500);
    assert!(
        message.contains("`trap`"),
        "the client learns which plugin failed: {message}"
    );
    // Fresh store per call: the trap poisoned nothing.
    assert_eq!(rejection(&run(&stage, chat("{}"))).0, 500);
}

/// filter.wit promises a fresh instance per request: globals, memory
/// contents and memory size left by one call are gone in the next, also
/// when calls run on several threads at once (the pool reuses its slots).
#[test]
fn every_request_sees_a_fresh_instance() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixtures::write(dir.path(), "stateful", &Behaviour::LeaveState);
    let stage = stage(dir.path(), &[spec("stateful", &path)]);
    for _ in 0..50 {
        forwarded(run(&stage, chat("{}")));
    }
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..50 {
                    forwarded(run(&stage, chat("{}")));
                }
            });
        }
    });
    // The fixture does notice state: started with its global already set,
    // as a reused instance would be, it refuses.
    let wat = fixtures::wat(&Behaviour::LeaveState, None);
    let seeded = wat.replace(
        "(global $calls (mut i32) (i32.const 0))",
        "(global $calls (mut i32) (i32.const 1))",
    );
    assert_ne!(wat, seeded);
    let path = fixtures::write_bytes(
        dir.path(),
        "seeded",
        &fixtures::with_world(&seeded, "filter"),
    );
    let stage = self::stage(dir.path(), &[spec("seeded", &path)]);
    assert_eq!(rejection(&run(&stage, chat("{}"))), (409, fixtures::STALE));
}

#[test]
fn plugin_failure_is_skipped_when_on_error_is_allow() {
    let dir = tempfile::tempdir().unwrap();
    let trap = fixtures::write(dir.path(), "trap", &Behaviour::Trap);
    let tag = fixtures::write(dir.path(), "tag", &Behaviour::AppendToBody(b'!'));
    let mut lenient = spec("trap", &trap);
    lenient.on_error = OnError::Allow;
    let r = forwarded(run(
        &stage(dir.path(), &[lenient, spec("tag", &tag)]),
        chat("x"),
    ));
    assert_eq!(
        r.body, b"x!",
        "the chain continues after a fail-open plugin"
    );
}

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) },
        0
    );
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Pins the calling thread to the first CPU it may run on; returns that CPU.
fn pin_to_one_cpu() -> usize {
    // SAFETY: sched_getaffinity/sched_setaffinity read and write one
    // cpu_set_t for the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set),
            0
        );
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &set))
            .expect("some CPU");
        pin_to(cpu);
        cpu
    }
}

fn pin_to(cpu: usize) {
    // SAFETY: as above.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0
        );
    }
}

#[test]
fn a_busy_machine_does_not_make_a_plugin_miss_its_budget() {
    // A plugin's budget is CPU time: a call that waits for a core because
    // other work holds it has used nothing yet. Here seven busy threads
    // share one CPU with the call, so the call takes about eight times its
    // CPU time in wall time, well past a budget of twice its CPU time.
    let dir = tempfile::tempdir().unwrap();
    let work = fixtures::write(dir.path(), "work", &Behaviour::Work(200_000_000));
    let cpu = pin_to_one_cpu();
    let calibrate = load_chain(
        &[spec("work", &work)],
        &PluginOptions {
            deadline: Duration::from_secs(5),
            ..options(dir.path())
        },
    )
    .unwrap();
    let started = thread_cpu_time();
    forwarded(run(&calibrate, chat("{}")));
    let alone = thread_cpu_time() - started;
    let budget = (alone * 2).max(Duration::from_millis(10));
    let stage = load_chain(
        &[spec("work", &work)],
        &PluginOptions {
            deadline: budget,
            ..options(dir.path())
        },
    )
    .unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hogs: Vec<_> = (0..7)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                pin_to(cpu);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    let started = Instant::now();
    let verdict = run(&stage, chat("{}"));
    let loaded = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in hogs {
        h.join().unwrap();
    }
    assert!(
        loaded > budget,
        "the busy threads should have slowed the call past its budget in wall time \
         (alone {alone:?}, budget {budget:?}, loaded {loaded:?})"
    );
    forwarded(verdict);
}

#[test]
fn plugin_infinite_loop_is_cut_at_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let spin = fixtures::write(dir.path(), "spin", &Behaviour::Spin);
    let allow = fixtures::write(dir.path(), "allow", &Behaviour::Allow);
    let stage = stage(dir.path(), &[spec("spin", &spin)]);
    // The deadline is CPU time of the thread running the call (this one).
    let started = thread_cpu_time();
    let (status, _) = rejection(&run(&stage, chat("{}")));
    let took = thread_cpu_time() - started;
    assert_eq!(status, 500);
    assert!(
        took >= Duration::from_millis(45),
        "cut before the 50 ms deadline: {took:?} of CPU"
    );
    assert!(
        took < Duration::from_millis(500),
        "not cut near the 50 ms deadline: {took:?} of CPU"
    );

    // The engine and its pool are fine afterwards.
    let ok = self::stage(dir.path(), &[spec("allow", &allow)]);
    forwarded(run(&ok, chat("{}")));
}

#[test]
fn plugin_memory_bomb_is_stopped_at_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = fixtures::write(dir.path(), "bomb", &Behaviour::MemoryBomb);
    let allow = fixtures::write(dir.path(), "allow", &Behaviour::Allow);
    let opts = PluginOptions {
        memory_cap: 8 << 20,
        ..options(dir.path())
    };
    let stage = load_chain(&[spec("bomb", &bomb), spec("allow", &allow)], &opts).unwrap();
    let started = Instant::now();
    assert_eq!(rejection(&run(&stage, chat("{}"))).0, 500);
    assert!(started.elapsed() < Duration::from_secs(1));

    let mut lenient = spec("bomb", &bomb);
    lenient.on_error = OnError::Allow;
    let stage = load_chain(&[lenient, spec("allow", &allow)], &opts).unwrap();
    for _ in 0..20 {
        forwarded(run(&stage, chat("{}")));
    }
}

#[test]
fn bad_sha256_pin_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let allow = fixtures::write(dir.path(), "allow", &Behaviour::Allow);
    let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read(&allow).unwrap(),
    ));

    let mut pinned = spec("allow", &allow);
    pinned.sha256 = Some(format!("sha256:{actual}"));
    assert!(load_chain(&[pinned.clone()], &options(dir.path())).is_ok());

    pinned.sha256 = Some("0".repeat(64));
    let err = load_chain(&[pinned], &options(dir.path()))
        .err()
        .expect("pin mismatch refused");
    assert!(matches!(err, PluginError::PinMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(&actual),
        "the error shows the actual digest: {err}"
    );
}

#[test]
fn files_that_are_not_plugins_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let text = fixtures::write_bytes(dir.path(), "text", b"hello");
    let err = load_chain(&[spec("text", &text)], &options(dir.path()))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a WebAssembly file"), "{err}");

    let bare = fixtures::write_bytes(dir.path(), "bare", &wat::parse_str("(module)").unwrap());
    let err = load_chain(&[spec("bare", &bare)], &options(dir.path()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("kiln-plugin SDK") || err.contains("filter"),
        "{err}"
    );

    let missing = dir.path().join("missing.wasm");
    let err = load_chain(&[spec("missing", &missing)], &options(dir.path()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cannot read") && err.contains("missing.wasm"),
        "{err}"
    );
}

#[test]
fn compiled_plugins_are_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let allow = fixtures::write(dir.path(), "allow", &Behaviour::Allow);
    let first = stage(dir.path(), &[spec("allow", &allow)]);
    assert!(!first.chain().plugins().next().unwrap().info.from_cache);
    let second = stage(dir.path(), &[spec("allow", &allow)]);
    assert!(second.chain().plugins().next().unwrap().info.from_cache);
    forwarded(run(&second, chat("{}")));
}

#[test]
fn hot_reload_keeps_in_flight_requests_on_the_old_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.wasm");
    std::fs::write(
        &path,
        fixtures::core_module(&Behaviour::SlowReject(300, "old"), None),
    )
    .unwrap();
    let opts = PluginOptions {
        deadline: Duration::from_secs(5),
        ..options(dir.path())
    };
    let stage = load_chain(&[spec("p", &path)], &opts).unwrap();

    // A request takes the current chain when it arrives (as `apply` does),
    // then runs for 300 ms while the reload happens.
    let in_flight = {
        let chain = stage.chain();
        std::thread::spawn(move || chain.run(chat("{}")))
    };
    std::thread::sleep(Duration::from_millis(50));
    std::fs::write(
        &path,
        fixtures::core_module(&Behaviour::Reject(403, "new"), None),
    )
    .unwrap();
    stage.reload().expect("the new plugin loads");

    assert_eq!(
        rejection(&run(&stage, chat("{}"))),
        (403, "new"),
        "new requests use the new chain"
    );
    let old = in_flight.join().unwrap();
    assert_eq!(
        rejection(&old),
        (403, "old"),
        "the in-flight request finished on the old chain"
    );
}

#[test]
fn broken_reload_keeps_the_old_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixtures::write(dir.path(), "p", &Behaviour::Reject(403, "v1"));
    let stage = stage(dir.path(), &[spec("p", &path)]);
    std::fs::write(&path, b"\0asm garbage").unwrap();
    let err = stage.reload().expect_err("a broken plugin is refused");
    assert!(err.to_string().contains("p.wasm"), "{err}");
    assert_eq!(rejection(&run(&stage, chat("{}"))), (403, "v1"));
}

#[tokio::test]
async fn changed_plugin_file_is_reloaded_by_the_watcher() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixtures::write(dir.path(), "p", &Behaviour::Reject(403, "v1"));
    let opts = PluginOptions {
        watch_interval: Duration::from_millis(50),
        ..options(dir.path())
    };
    let stage = load_chain(&[spec("p", &path)], &opts).unwrap();
    let watcher = stage.spawn_reloader();
    assert_eq!(rejection(&stage.apply(chat("{}")).await), (403, "v1"));

    // A different length guarantees the change is seen even if the mtime
    // resolution is coarse.
    std::fs::write(
        &path,
        fixtures::core_module(&Behaviour::Reject(403, "version two"), None),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = stage.apply(chat("{}")).await;
        if rejection(&v).1 == "version two" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the watcher did not reload the changed plugin within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    watcher.abort();
}

#[tokio::test]
async fn stage_apply_forwards_when_no_plugin_matches() {
    // A plugin that refuses everything, selected for embeddings only: a
    // chat request passes it by.
    let dir = tempfile::tempdir().unwrap();
    let path = fixtures::write(dir.path(), "deny", &Behaviour::Reject(403, "denied"));
    let mut deny = spec("deny", &path);
    deny.routes = Some(vec!["embed".into()]);
    let stage = stage(dir.path(), &[deny]);
    let r = forwarded(stage.apply(chat("{}")).await);
    assert_eq!(r.body, b"{}");
}

#[test]
fn plugin_run_tool_explains_each_kind_of_failure() {
    let dir = tempfile::tempdir().unwrap();
    let request = dir.path().join("req.json");
    std::fs::write(
        &request,
        r#"{"path":"/api/chat","body":{"model":"m","messages":[]}}"#,
    )
    .unwrap();
    let cases = [
        (Behaviour::Trap, "trapped"),
        (Behaviour::Spin, "deadline"),
        (Behaviour::MemoryBomb, "memory"),
    ];
    for (behaviour, expected) in cases {
        let path = fixtures::write(dir.path(), "p", &behaviour);
        let out = kiln_proxy::plugins::tool::run(&path, None, &request).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["decision"], "failure", "{out}");
        let reason = v["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(expected),
            "expected {expected:?} in {reason:?}"
        );
    }

    let path = fixtures::write(dir.path(), "p", &Behaviour::SetHeader("x-a", "b"));
    let out = kiln_proxy::plugins::tool::run(&path, None, &request).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "modify");
    assert_eq!(v["request"]["headers"][0], serde_json::json!(["x-a", "b"]));
}

#[test]
fn core_module_without_a_world_is_taken_as_the_filter_world() {
    // What a C or Zig plugin without wit-bindgen looks like: canonical-ABI
    // exports, no component-type section.
    let dir = tempfile::tempdir().unwrap();
    let bare = wat::parse_str(fixtures::wat(&Behaviour::Reject(418, "bare"), None)).unwrap();
    let path = fixtures::write_bytes(dir.path(), "bare", &bare);
    let v = run(&stage(dir.path(), &[spec("bare", &path)]), chat("{}"));
    assert_eq!(rejection(&v), (418, "bare"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_apply_runs_plugins_in_place_on_a_multi_thread_runtime() {
    // The proxy's runtime: plugins run via block_in_place, and a slow plugin
    // must not stall other tasks on the runtime meanwhile.
    let dir = tempfile::tempdir().unwrap();
    let slow = fixtures::write(dir.path(), "slow", &Behaviour::SlowReject(200, "slow"));
    let opts = PluginOptions {
        deadline: Duration::from_secs(2),
        ..options(dir.path())
    };
    let stage = load_chain(&[spec("slow", &slow)], &opts).unwrap();
    let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let verdicts = futures_util::future::join_all((0..2).map(|_| stage.apply(chat("{}")))).await;
    for v in &verdicts {
        assert_eq!(rejection(v), (403, "slow"));
    }
    let seen = ticks.load(std::sync::atomic::Ordering::Relaxed);
    ticker.abort();
    assert!(
        seen >= 10,
        "other tasks kept running while plugins ran: {seen} ticks of 10 ms"
    );
}

#[test]
fn plugin_check_tool_describes_the_plugin_and_refuses_bad_configs() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixtures::write(dir.path(), "p", &Behaviour::Allow);
    let out = kiln_proxy::plugins::tool::check(&path, None).unwrap();
    for expected in [
        "kiln:filter@0.2.0",
        "componentized at load",
        "on-request",
        "validate-config",
        "sha256:",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from:\n{out}");
    }
    let picky = fixtures::write_bytes(
        dir.path(),
        "picky",
        &fixtures::core_module(&Behaviour::Allow, Some("set `keys`")),
    );
    let err = kiln_proxy::plugins::tool::check(&picky, Some(serde_json::json!({}))).unwrap_err();
    assert!(format!("{err:#}").contains("set `keys`"), "{err:#}");
}
