//! The response plugins of one answer: the plugins of the current chain that
//! export the response hooks and select the request's route, each with its
//! own instance for the whole answer (created at its first call), called in
//! config order for every chunk and once at completion.
//!
//! Same limits as the request hook: every call is bounded by the deadline
//! (re-armed per call), the instance by the memory cap. A failed call
//! poisons only that instance; then `on_error` decides: `deny` ends the
//! answer with an error, `allow` leaves the plugin out for the rest of it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use wasmtime::Store;

use super::OnError;
use super::chain::{Chain, describe_failure, wit_route};
use super::loader::LoadedPlugin;
use super::response_world::{ResponseFilter, wit};
use super::runtime::{CallState, wit as types};
use super::stage::PluginStage;
use super::stats::ChunkOutcome;
use crate::response::{
    Chunk, Ended, ResponseContext, ResponseHooks, ResponseOutcome, ResponseStage, Stop, Usage,
};

/// One plugin's instance for one answer.
enum Slot {
    /// Not called yet: instantiated at its first call.
    Fresh,
    Live {
        store: Box<Store<CallState>>,
        instance: ResponseFilter,
        /// The plugin answered `pass-rest`: only the completion hook remains.
        pass_rest: bool,
    },
    /// Failed with `on_error = "allow"` (or already ended): left out.
    Off,
}

/// Response-hook calls by [`ChunkOutcome`], and their time.
#[derive(Clone, Copy, Default)]
struct Tally {
    calls: [u64; 4],
    time: Duration,
    /// The first call, when the answer is traced.
    first: Option<SystemTime>,
}

pub struct ResponseRun {
    chain: Arc<Chain>,
    /// Indexes into `chain.plugins`, in config order, with their slots.
    slots: Vec<(usize, Slot)>,
    /// Per slot: the calls and time of this answer, added to the plugin's
    /// shared metrics once at completion rather than per chunk.
    tallies: Vec<Tally>,
    /// The request's trace context, when its span is recorded: each
    /// plugin's calls on this answer become one span under it.
    trace: Option<opentelemetry::Context>,
}

impl ResponseStage for PluginStage {
    fn begin(&self, ctx: &ResponseContext) -> Option<Box<dyn ResponseHooks>> {
        let chain = self.chain();
        let slots: Vec<(usize, Slot)> = chain
            .plugins
            .iter()
            .enumerate()
            .filter(|(_, p)| p.response.is_some() && p.routes.contains(ctx.route))
            .map(|(i, _)| (i, Slot::Fresh))
            .collect();
        if slots.is_empty() {
            return None;
        }
        Some(Box::new(ResponseRun {
            chain,
            tallies: vec![Tally::default(); slots.len()],
            slots,
            trace: crate::telemetry::recording_context(),
        }))
    }
}

fn wit_context(ctx: &ResponseContext) -> wit::ResponseContext<'_> {
    wit::ResponseContext {
        request_id: &ctx.request_id,
        route: wit_route(ctx.route),
        path: &ctx.path,
        model: ctx.model.as_deref(),
        stream: ctx.stream,
        status: ctx.status,
    }
}

/// Whether a plugin takes no more chunks of this answer.
fn done_with_chunks(slot: &Slot) -> bool {
    matches!(
        slot,
        Slot::Off
            | Slot::Live {
                pass_rest: true,
                ..
            }
    )
}

/// A plugin's `end` as the stage's stop order.
fn stop_of(r: types::Rejection) -> Stop {
    Stop {
        status: r.status,
        message: r.message,
        headers: r
            .headers
            .into_iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value))
            .collect(),
    }
}

/// A plugin's new thinking, text and tool-call arguments for `chunk`
/// (thinking first: it comes before the text on the wire).
fn rewrite(chunk: &mut Chunk, parts: wit::Parts, plugin: &str, ctx: &ResponseContext) {
    let wit::Parts {
        text,
        thinking,
        tool_arguments,
    } = parts;
    let placed = thinking.is_none_or(|t| chunk.set_thinking(t))
        & text.is_none_or(|t| chunk.set_text(t))
        & tool_arguments.is_none_or(|a| chunk.set_tool_arguments(a));
    if !placed {
        tracing::debug!(plugin, path = %ctx.path, "response plugin rewrote a part this chunk has no place for (thinking on a route without it, tool-call arguments on a chunk without a call); ignored");
    }
}

fn wit_outcome(o: ResponseOutcome) -> wit::ResponseOutcome {
    match o {
        ResponseOutcome::Completed => wit::ResponseOutcome::Completed,
        ResponseOutcome::EndedByPlugin => wit::ResponseOutcome::EndedByPlugin,
        ResponseOutcome::ClientGone => wit::ResponseOutcome::ClientGone,
        ResponseOutcome::UpstreamFailed => wit::ResponseOutcome::UpstreamFailed,
        ResponseOutcome::TimedOut => wit::ResponseOutcome::TimedOut,
    }
}

impl ResponseRun {
    /// The live instance of slot `k`, instantiated on first use.
    fn live(
        chain: &Chain,
        plugin: &LoadedPlugin,
        slot: &mut Slot,
        ctx: &ResponseContext,
    ) -> Result<(), String> {
        if !matches!(slot, Slot::Fresh) {
            return Ok(());
        }
        let Some(pre) = &plugin.response else {
            *slot = Slot::Off;
            return Ok(());
        };
        let mut store = chain.runtime.store(plugin.context.clone());
        // Instantiation and the start call share the first call's deadline.
        let started = pre.instantiate(&mut store).and_then(|instance| {
            instance
                .kiln_filter_response()
                .call_on_response_start(&mut store, wit_context(ctx))?;
            Ok(instance)
        });
        match started {
            Ok(instance) => {
                *slot = Slot::Live {
                    store: Box::new(store),
                    instance,
                    pass_rest: false,
                };
                Ok(())
            }
            Err(e) => {
                *slot = Slot::Off;
                Err(describe_failure(&e, &store))
            }
        }
    }

    /// A failed call: the log says why; `on_error` says what the answer gets.
    fn failed(plugin: &LoadedPlugin, slot: &mut Slot, reason: &str) -> Result<(), Stop> {
        // The store may be poisoned by a trap: drop it with the slot.
        *slot = Slot::Off;
        match plugin.on_error {
            OnError::Allow => {
                tracing::warn!(plugin = %plugin.name, reason, "response plugin failed; the answer continues without it (on_error = \"allow\")");
                Ok(())
            }
            OnError::Deny => {
                tracing::error!(plugin = %plugin.name, reason, "response plugin failed; the answer is stopped (on_error = \"deny\")");
                Err(Stop {
                    status: 500,
                    message: format!(
                        "the answer was stopped because the policy plugin `{}` failed; the proxy log has the details",
                        plugin.name
                    ),
                    headers: Vec::new(),
                })
            }
        }
    }
}

impl ResponseHooks for ResponseRun {
    fn on_chunks(&mut self, ctx: &ResponseContext, chunks: &mut [Chunk]) -> Result<(), Ended> {
        let chain = self.chain.clone();
        // The chunks still going out: a plugin that ends the answer cuts
        // them short for the plugins after it.
        let mut live = chunks.len();
        let mut ended = None;
        for ((index, slot), tally) in self.slots.iter_mut().zip(&mut self.tallies) {
            if done_with_chunks(slot) {
                continue; // the common case after `pass-rest`: no clock, no counters
            }
            let plugin = &chain.plugins[*index];
            let started = Instant::now();
            if self.trace.is_some() && tally.first.is_none() {
                tally.first = Some(SystemTime::now());
            }
            for (k, chunk) in chunks[..live].iter_mut().enumerate() {
                if done_with_chunks(slot) {
                    break;
                }
                // The first call on a live instance starts when the batch's
                // clock was read; later ones (or after instantiating) read it.
                let now = match (k, &*slot) {
                    (0, Slot::Live { .. }) => started,
                    _ => Instant::now(),
                };
                if let Err(reason) = Self::live(&chain, plugin, slot, ctx) {
                    tally.calls[ChunkOutcome::Failure as usize] += 1;
                    if let Err(stop) = Self::failed(plugin, slot, &reason) {
                        (live, ended) = (k, Some(stop));
                    }
                    break;
                }
                let Slot::Live {
                    store,
                    instance,
                    pass_rest,
                } = slot
                else {
                    break;
                };
                chain.runtime.rearm(store, now);
                // Each plugin sees the chunk as rewritten by the ones before it.
                let raw = chunk.raw_bytes();
                let wchunk = wit::Chunk {
                    text: chunk.text(),
                    thinking: chunk.thinking(),
                    raw: &raw,
                    done: chunk.done(),
                    thinking_done: chunk.thinking_done(),
                    tool_arguments: chunk.tool_arguments(),
                };
                let action = instance
                    .kiln_filter_response()
                    .call_on_response_chunk(&mut **store, wchunk);
                let outcome = match action {
                    Ok(wit::ChunkAction::Pass) => ChunkOutcome::Pass,
                    Ok(wit::ChunkAction::PassRest) => {
                        *pass_rest = true;
                        ChunkOutcome::Pass
                    }
                    Ok(wit::ChunkAction::RewriteText(text)) => {
                        rewrite(
                            chunk,
                            wit::Parts {
                                text: Some(text),
                                thinking: None,
                                tool_arguments: None,
                            },
                            &plugin.name,
                            ctx,
                        );
                        ChunkOutcome::Rewrite
                    }
                    Ok(wit::ChunkAction::RewriteParts(parts)) => {
                        rewrite(chunk, parts, &plugin.name, ctx);
                        ChunkOutcome::Rewrite
                    }
                    Ok(wit::ChunkAction::End(r)) => {
                        (live, ended) = (k, Some(stop_of(r)));
                        ChunkOutcome::End
                    }
                    Err(e) => {
                        let reason = describe_failure(&e, store);
                        if let Err(stop) = Self::failed(plugin, slot, &reason) {
                            (live, ended) = (k, Some(stop));
                        }
                        ChunkOutcome::Failure
                    }
                };
                tally.calls[outcome as usize] += 1;
                if matches!(outcome, ChunkOutcome::End | ChunkOutcome::Failure) {
                    break;
                }
            }
            tally.time += started.elapsed();
        }
        match ended {
            Some(stop) => Err(Ended { sent: live, stop }),
            None => Ok(()),
        }
    }

    fn on_complete(
        &mut self,
        ctx: &ResponseContext,
        outcome: ResponseOutcome,
        usage: Option<Usage>,
    ) {
        let chain = self.chain.clone();
        let headers: Vec<types::Header> = ctx
            .headers
            .iter()
            .map(|(name, value)| types::Header {
                name: name.clone(),
                value: value.clone(),
            })
            .collect();
        let headers: Vec<&types::Header> = headers.iter().collect();
        let completion = wit::Completion {
            outcome: wit_outcome(outcome),
            usage: usage.map(|u| wit::Usage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
            }),
            headers: &headers,
        };
        for ((index, slot), tally) in self.slots.iter_mut().zip(&mut self.tallies) {
            let plugin = &chain.plugins[*index];
            match Self::live(&chain, plugin, slot, ctx) {
                Err(reason) => {
                    tally.calls[ChunkOutcome::Failure as usize] += 1;
                    tracing::warn!(plugin = %plugin.name, reason, "response plugin could not be called at completion");
                }
                Ok(()) => {
                    if let Slot::Live {
                        store, instance, ..
                    } = slot
                    {
                        let started = Instant::now();
                        chain.runtime.rearm(store, started);
                        let result = instance
                            .kiln_filter_response()
                            .call_on_response_complete(&mut **store, completion.clone());
                        tally.time += started.elapsed();
                        if let Err(e) = result {
                            tally.calls[ChunkOutcome::Failure as usize] += 1;
                            let reason = describe_failure(&e, store);
                            tracing::warn!(plugin = %plugin.name, reason, "response plugin failed at completion");
                        }
                    }
                }
            }
            plugin.stats.record_response(tally.calls, tally.time);
            if let Some(parent) = &self.trace {
                let calls = tally.calls.iter().sum::<u64>() + 1;
                let started = tally.first.unwrap_or_else(SystemTime::now);
                let decision = [
                    ChunkOutcome::Failure,
                    ChunkOutcome::End,
                    ChunkOutcome::Rewrite,
                ]
                .into_iter()
                .find(|o| tally.calls[*o as usize] > 0)
                .unwrap_or(ChunkOutcome::Pass);
                crate::telemetry::plugin_span(
                    Some(parent),
                    started,
                    &plugin.name,
                    "response",
                    decision.label(),
                    calls,
                );
            }
            // Instances are dropped with the answer; nothing is called twice.
            *slot = Slot::Off;
        }
    }
}
