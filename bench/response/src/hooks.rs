//! In-process: what the response stage costs per chunk, with no sockets,
//! client or emulator in the way. Each chunk of Ollama's body arrives on
//! its own, as hyper hands it over, and goes through what kiln-proxy's
//! filtered stream does with it (the framer, then the answer: reading the
//! chunk, the plugins' calls, the output), timed on one thread.
//!
//! `framing` runs the same path with hooks that do nothing: the host's
//! share, which every response plugin pays (the answer reads every chunk,
//! to count what was generated).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kiln_proxy::filter::{RequestFilter, RouteKind};
use kiln_proxy::framing::{Format, Framer};
use kiln_proxy::response::Kind;
use kiln_proxy::response::answer::{Answer, Output};
use kiln_proxy::response::{
    Chunk, Ended, ResponseContext, ResponseHooks, ResponseOutcome, ResponseStage, Usage,
};
use serde_json::json;

/// The hooks of one answer, or none (`framing`).
pub enum Hooks {
    Framing,
    Plugins(Arc<dyn RequestFilter>),
}

struct Nothing;

impl ResponseHooks for Nothing {
    fn on_chunks(&mut self, _: &ResponseContext, _: &mut [Chunk]) -> Result<(), Ended> {
        Ok(())
    }
    fn on_complete(&mut self, _: &ResponseContext, _: ResponseOutcome, _: Option<Usage>) {}
}

impl Hooks {
    fn begin(&self, ctx: &ResponseContext) -> Box<dyn ResponseHooks> {
        match self {
            Hooks::Framing => Box::new(Nothing),
            Hooks::Plugins(filter) => filter
                .responses()
                .and_then(|stage: &dyn ResponseStage| stage.begin(ctx))
                .expect("the chain has a response plugin for this route"),
        }
    }
}

/// One API's stream: its chunks as Ollama sends them.
pub struct Api {
    pub name: &'static str,
    format: Format,
    route: RouteKind,
    path: &'static str,
    chunks: Vec<Bytes>,
}

impl Api {
    /// `/api/generate`, NDJSON, `tokens` tokens and the final metrics line.
    pub fn ndjson(tokens: usize) -> Api {
        let mut chunks: Vec<Bytes> = (0..tokens)
            .map(|i| {
                let v = json!({"model": "gemma3:4b", "created_at": "2026-11-27T07:35:01.123456789Z",
                               "response": ollama_emulator::token(i), "done": false});
                Bytes::from(format!("{v}\n"))
            })
            .collect();
        let last = json!({"model": "gemma3:4b", "created_at": "2026-11-27T07:35:01.123456789Z",
                          "response": "", "done": true, "done_reason": "length",
                          "prompt_eval_count": 12, "eval_count": tokens});
        chunks.push(Bytes::from(format!("{last}\n")));
        Api {
            name: "NDJSON (/api/generate)",
            format: Format::Ndjson,
            route: RouteKind::OllamaGenerate,
            path: "/api/generate",
            chunks,
        }
    }

    /// `/v1/chat/completions`, SSE, with the usage chunk and `[DONE]`.
    pub fn sse(tokens: usize) -> Api {
        let event = |content: &str, finish: serde_json::Value| {
            let v = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_795_000_000,
                           "model": "gemma3:4b", "system_fingerprint": "fp_ollama",
                           "choices": [{"index": 0, "delta": {"role": "assistant", "content": content},
                                        "finish_reason": finish}]});
            Bytes::from(format!("data: {v}\n\n"))
        };
        let mut chunks: Vec<Bytes> = (0..tokens)
            .map(|i| event(ollama_emulator::token(i), serde_json::Value::Null))
            .collect();
        chunks.push(event("", json!("length")));
        let usage = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_795_000_000,
                           "model": "gemma3:4b", "choices": [],
                           "usage": {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": tokens + 12}});
        chunks.push(Bytes::from(format!("data: {usage}\n\n")));
        chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
        Api {
            name: "SSE (/v1/chat/completions)",
            format: Format::Sse,
            route: RouteKind::OpenaiChat,
            path: "/v1/chat/completions",
            chunks,
        }
    }

    /// How many chunks the answer has (tokens, plus the API's closing ones).
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    fn context(&self) -> ResponseContext {
        ResponseContext {
            request_id: "0123456789abcdef0123456789abcdef".into(),
            route: self.route,
            path: self.path.into(),
            model: Some("gemma3:4b".into()),
            stream: true,
            status: 200,
            headers: vec![("authorization".into(), "Bearer k-alice".into())],
        }
    }
}

/// CPU time of this thread: other work on the machine does not count.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU nanoseconds per chunk for one answer through `hooks` (median of
/// `rounds` answers).
pub fn ns_per_chunk(hooks: &Hooks, api: &Api, rounds: usize) -> f64 {
    let ctx = api.context();
    let codec = kiln_proxy::routes::classify(api.path)
        .and_then(|r| r.codec)
        .expect("a route whose answers a codec reads");
    let kind = match api.format {
        Format::Ndjson => Kind::Line,
        Format::Sse => Kind::Event,
    };
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = thread_cpu();
            let mut answer = Answer::of(codec, kind, hooks.begin(&ctx), ctx.clone(), false);
            let mut framer = Framer::new(api.format, 1 << 20);
            for read in &api.chunks {
                framer.push_bytes(read.clone());
                while let Some(frame) = framer.next_frame().expect("well-formed") {
                    answer.push(frame);
                }
                let mut out = Output::default();
                answer.run(&mut out).expect("no plugin ends the answer");
                black_box(out.freeze());
            }
            answer.complete(ResponseOutcome::Completed);
            thread_cpu().saturating_sub(start).as_nanos() as f64 / api.chunks.len() as f64
        })
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}
