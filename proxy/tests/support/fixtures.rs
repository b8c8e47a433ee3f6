//! Hand-written plugins for host tests: core modules in WAT that follow the
//! canonical ABI of `kiln:filter@0.2.0` by hand, with the world embedded the
//! way wit-bindgen does, so the host componentizes them at load like any
//! SDK-built plugin.
//!
//! Memory map: 0..256 scratch, 256 the returned decision, 512 header edits,
//! 1024.. constant strings, 4096.. the bump heap of `cabi_realloc`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// What `on-request` does.
pub enum Behaviour<'a> {
    Allow,
    Reject(u16, &'a str),
    /// Rewrites the body to the old body plus this byte.
    AppendToBody(u8),
    SetHeader(&'a str, &'a str),
    /// Rejects with 403 and the plugin's config JSON as the message.
    RejectWithConfig,
    Trap,
    Spin,
    /// Grows memory 1 MiB at a time, forever.
    MemoryBomb,
    /// Busy-waits this many milliseconds on the host's monotonic clock, then
    /// rejects with 403 and the message.
    SlowReject(u64, &'a str),
    /// Counts down from this number (a fixed amount of CPU work), then allows.
    Work(u64),
    /// Leaves state behind in every place an instance has (a global, a word
    /// of memory, one more page of memory), then allows; but rejects with
    /// 409 when it finds any of it already there, left by an earlier call.
    LeaveState,
}

const DECISION: u32 = 256;
const EDITS: u32 = 512;
const DATA: u32 = 1024;
/// Where `LeaveState` leaves a word in memory.
const STATE: u32 = 128;
/// The fixtures' initial memory, in 64 KiB pages.
const PAGES: u32 = 2;
/// `LeaveState`'s message when it finds state from an earlier call.
pub const STALE: &str = "this instance has state from an earlier call";
/// A zero word in a decision: a null pointer or an empty list.
const NONE: &str = "(i32.const 0)";

/// Code that stores a decision at DECISION and returns its address: the
/// variant `tag`, then `at4` (a store at DECISION + 4), then the i32 words
/// at offsets 8, 12, 16 and 20.
fn decision(tag: u8, at4: &str, words: [&str; 4]) -> String {
    let [w8, w12, w16, w20] = words;
    format!(
        "(i32.store8 (i32.const {DECISION}) (i32.const {tag}))
         {at4}
         (i32.store (i32.const {d8}) {w8})
         (i32.store (i32.const {d12}) {w12})
         (i32.store (i32.const {d16}) {w16})
         (i32.store (i32.const {d20}) {w20})
         (i32.const {DECISION})",
        d8 = DECISION + 8,
        d12 = DECISION + 12,
        d16 = DECISION + 16,
        d20 = DECISION + 20,
    )
}

/// A `modify` decision: `body_set` says whether words 8 and 12 (pointer and
/// length) are a new body; words 16 and 20 are the header edits.
fn modify(body_set: bool, words: [&str; 4]) -> String {
    let at4 = format!(
        "(i32.store8 (i32.const {}) (i32.const {}))",
        DECISION + 4,
        u8::from(body_set)
    );
    decision(1, &at4, words)
}

/// A `reject` decision with `status` and the message at `msg_ptr`/`msg_len`.
fn reject(status: u16, msg_ptr: &str, msg_len: &str) -> String {
    let at4 = format!(
        "(i32.store16 (i32.const {}) (i32.const {status}))",
        DECISION + 4
    );
    decision(2, &at4, [msg_ptr, msg_len, NONE, NONE])
}

/// Returns (code, data segments) for `on-request`.
fn on_request_body(b: &Behaviour) -> (String, Vec<(u32, Vec<u8>)>) {
    match b {
        Behaviour::Allow => (format!("(i32.store8 (i32.const {DECISION}) (i32.const 0)) (i32.const {DECISION})"), vec![]),
        Behaviour::Reject(status, msg) => (
            reject(*status, &format!("(i32.const {DATA})"), &format!("(i32.const {})", msg.len())),
            vec![(DATA, msg.as_bytes().to_vec())],
        ),
        Behaviour::AppendToBody(byte) => (
            format!(
                "(local.set $out (call $realloc (i32.const 0) (i32.const 0) (i32.const 1) (i32.add (local.get 8) (i32.const 1))))
                 (memory.copy (local.get $out) (local.get 7) (local.get 8))
                 (i32.store8 (i32.add (local.get $out) (local.get 8)) (i32.const {byte}))
                 {}",
                modify(
                    true,
                    [
                        "(local.get $out)",
                        "(i32.add (local.get 8) (i32.const 1))",
                        NONE,
                        NONE,
                    ]
                ),
            ),
            vec![],
        ),
        Behaviour::SetHeader(name, value) => {
            let value_at = DATA + name.len() as u32;
            (
                format!(
                    "(i32.store8 (i32.const {EDITS}) (i32.const 0))
                     (i32.store (i32.const {e4}) (i32.const {DATA}))
                     (i32.store (i32.const {e8}) (i32.const {nl}))
                     (i32.store (i32.const {e12}) (i32.const {value_at}))
                     (i32.store (i32.const {e16}) (i32.const {vl}))
                     {}",
                    modify(
                        false,
                        [
                            NONE,
                            NONE,
                            &format!("(i32.const {EDITS})"),
                            "(i32.const 1)",
                        ]
                    ),
                    e4 = EDITS + 4,
                    e8 = EDITS + 8,
                    e12 = EDITS + 12,
                    e16 = EDITS + 16,
                    nl = name.len(),
                    vl = value.len(),
                ),
                vec![(DATA, [name.as_bytes(), value.as_bytes()].concat())],
            )
        }
        Behaviour::RejectWithConfig => (
            format!(
                "(call $config (i32.const 0)) {}",
                reject(403, "(i32.load (i32.const 0))", "(i32.load (i32.const 4))")
            ),
            vec![],
        ),
        Behaviour::Trap => ("(unreachable)".into(), vec![]),
        Behaviour::Spin => ("(loop $l (br $l)) (unreachable)".into(), vec![]),
        Behaviour::Work(n) => (
            format!(
                "(local.set $start (i64.const {n}))
                 (loop $l (local.set $start (i64.sub (local.get $start) (i64.const 1)))
                          (br_if $l (i64.ne (local.get $start) (i64.const 0))))
                 (i32.store8 (i32.const {DECISION}) (i32.const 0)) (i32.const {DECISION})"
            ),
            vec![],
        ),
        Behaviour::LeaveState => (
            format!(
                "(block $fresh
                   (br_if $fresh (i32.and (i32.eqz (global.get $calls))
                     (i32.and (i32.eqz (i32.load (i32.const {STATE})))
                              (i32.eq (memory.size) (i32.const {PAGES})))))
                   (return {}))
                 (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
                 (i32.store (i32.const {STATE}) (i32.const 1))
                 (drop (memory.grow (i32.const 1)))
                 (i32.store8 (i32.const {DECISION}) (i32.const 0)) (i32.const {DECISION})",
                reject(409, &format!("(i32.const {DATA})"), &format!("(i32.const {})", STALE.len())),
            ),
            vec![(DATA, STALE.as_bytes().to_vec())],
        ),
        Behaviour::MemoryBomb => ("(loop $l (drop (memory.grow (i32.const 16))) (br $l)) (unreachable)".into(), vec![]),
        Behaviour::SlowReject(ms, msg) => (
            format!(
                "(local.set $start (call $now))
                 (loop $l (br_if $l (i64.lt_u (i64.sub (call $now) (local.get $start)) (i64.const {ns}))))
                 {}",
                reject(403, &format!("(i32.const {DATA})"), &format!("(i32.const {})", msg.len())),
                ns = ms * 1_000_000,
            ),
            vec![(DATA, msg.as_bytes().to_vec())],
        ),
    }
}

/// The WAT of a plugin; `config_error` makes `validate-config` refuse.
pub fn wat(behaviour: &Behaviour, config_error: Option<&str>) -> String {
    let (code, mut data) = on_request_body(behaviour);
    let validate = match config_error {
        None => "(i32.store8 (i32.const 16) (i32.const 0)) (i32.const 16)".to_owned(),
        Some(msg) => {
            data.push((2048, msg.as_bytes().to_vec()));
            format!(
                "(i32.store8 (i32.const 16) (i32.const 1)) (i32.store (i32.const 20) (i32.const 2048)) (i32.store (i32.const 24) (i32.const {})) (i32.const 16)",
                msg.len()
            )
        }
    };
    let data: String = data
        .iter()
        .map(|(at, bytes)| {
            let escaped: String = bytes.iter().map(|b| format!("\\{b:02x}")).collect();
            format!("(data (i32.const {at}) \"{escaped}\")\n")
        })
        .collect();
    format!(
        r#"(module
  (import "kiln:filter/host@0.2.0" "monotonic-now" (func $now (result i64)))
  (import "kiln:filter/host@0.2.0" "config" (func $config (param i32)))
  (memory (export "memory") {PAGES})
  (global $heap (mut i32) (i32.const 4096))
  (global $calls (mut i32) (i32.const 0))
  (func $realloc (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (block $fits
      (br_if $fits (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
      (br_if $fits (i32.ne (i32.const -1)
        (memory.grow (i32.add (i32.const 1) (i32.shr_u (global.get $heap) (i32.const 16)))))))
    (local.get $p))
  (func (export "validate-config") (result i32) {validate})
  (func (export "on-request") (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    (local $out i32) (local $start i64)
    {code})
  {data})"#
    )
}

/// The plugin as a core module with its world embedded.
pub fn core_module(behaviour: &Behaviour, config_error: Option<&str>) -> Vec<u8> {
    with_world(&wat(behaviour, config_error), "filter")
}

/// The core module of `wat` with the world `world` of plugins/wit/filter.wit
/// embedded, as wit-bindgen embeds it.
pub fn with_world(wat: &str, world: &str) -> Vec<u8> {
    let mut module = wat::parse_str(wat).expect("fixture WAT parses");
    let mut resolve = wit_parser::Resolve::default();
    let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/wit/filter.wit");
    let pkg = resolve
        .push_file(&wit)
        .expect("plugins/wit/filter.wit parses");
    let world = resolve
        .select_world(&[pkg], Some(world))
        .unwrap_or_else(|e| panic!("world `{world}` exists: {e}"));
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
        false,
    )
    .expect("metadata embeds");
    module
}

/// Writes the plugin to `dir/name.wasm` and returns the path.
pub fn write(dir: &Path, name: &str, behaviour: &Behaviour) -> PathBuf {
    write_bytes(dir, name, &core_module(behaviour, None))
}

pub fn write_bytes(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, bytes).expect("fixture written");
    path
}

/// A response-only plugin (world `response-filter`) as a core module with
/// the world embedded: one page of memory, a bump `cabi_realloc` from 1024,
/// a `validate-config` that accepts, and an `on-response-start` and an
/// `on-response-complete` that do nothing. `on_chunk` is the body of
/// `on-response-chunk`, which must return the address of the action it
/// stores (discriminant byte, then a string's pointer and length);
/// `fields` adds module fields (globals, data).
///
/// Flattened, the context is 10 i32s and a chunk 13 (its text and thinking
/// options, 3 each, raw list, 2, `done`, the 9th, `thinking-done`, and the
/// tool-arguments option, 3), a completion i32 i32 i64 i64 i32 i32
/// (outcome, usage option, headers list).
pub fn response_filter(fields: &str, on_chunk: &str) -> Vec<u8> {
    let params10 = "i32 ".repeat(10);
    let params13 = "i32 ".repeat(13);
    let wat = format!(
        r#"(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  {fields}
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.add (local.get 3) (i32.const 8))))
    (local.get $p))
  (func (export "validate-config") (result i32)
    (i32.store8 (i32.const 16) (i32.const 0)) (i32.const 16))
  (func (export "kiln:filter/response@0.2.0#on-response-start") (param {params10}))
  (func (export "kiln:filter/response@0.2.0#on-response-chunk") (param {params13}) (result i32)
    {on_chunk})
  (func (export "kiln:filter/response@0.2.0#on-response-complete")
    (param i32 i32 i64 i64 i32 i32)))"#
    );
    with_world(&wat, "response-filter")
}
