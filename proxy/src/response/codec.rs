//! What varies between the APIs whose answers the response hooks see, as one
//! trait: a [`Codec`] per API (`ollama`, `openai`, `responses`, `messages`)
//! reads a raw chunk of its API into a [`View`], writes a channel back into
//! it, makes a chunk of its own to carry inserted text, and keeps the state
//! an answer of its API needs ([`AnswerState`]). Everything above — the
//! [`Chunk`], the streamed and whole bodies, the hooks — is format-blind.
//!
//! Also here: the lenient typed reading the codecs share ([`Scalar`],
//! [`Obj`]), and the byte helpers for SSE events and the in-place splice.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::chunk::Chunk;
use crate::framing::Format;

/// How the chunk was cut from the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One NDJSON line, `\n` included.
    Line,
    /// One SSE event, its blank line included.
    Event,
    /// The whole body of an answer that does not stream.
    Whole,
}

/// The text channels of an answer: the text, the model's thinking, and
/// the arguments of its tool calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Text,
    Thinking,
    /// Every tool call's arguments in the chunk as JSON text, one line per
    /// call (see [`arguments_text`]). Ollama sends each call whole, in one
    /// chunk, on every API, so a call's arguments are never split between
    /// chunks, and have no place outside the chunk that carries the call:
    /// this channel is only rewritten, never inserted.
    ToolArguments,
}

impl Channel {
    /// Every channel, in the order inserted chunks go out (the model thinks
    /// before it answers).
    pub const ALL: [Channel; Channel::COUNT] =
        [Channel::Thinking, Channel::Text, Channel::ToolArguments];
    pub const COUNT: usize = 3;

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// Token counts as Ollama reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    /// The counts of an answer after a later report: a count the later
    /// report gives (non-zero) replaces the earlier one, a missing one keeps
    /// it. Anthropic's stream reports the input tokens in `message_start`
    /// and the output tokens in `message_delta` (where Ollama repeats the
    /// final input count, and Anthropic itself sends none); every other API
    /// reports once.
    pub fn merged(earlier: Option<Usage>, later: Usage) -> Usage {
        let Some(earlier) = earlier else {
            return later;
        };
        let keep = |later: u64, earlier: u64| if later == 0 { earlier } else { later };
        Usage {
            prompt_tokens: keep(later.prompt_tokens, earlier.prompt_tokens),
            completion_tokens: keep(later.completion_tokens, earlier.completion_tokens),
        }
    }
}

/// What the hooks see of a chunk, whatever its API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub text: Option<String>,
    /// The model's thinking (reasoning) in this chunk.
    pub thinking: Option<String>,
    /// The arguments of the tool calls in this chunk ([`Channel::ToolArguments`]).
    pub tool_arguments: Option<String>,
    /// Generation ends with this chunk, by what the chunk itself says.
    pub done: bool,
    /// The thinking ends with this chunk, by what the chunk itself says (a
    /// Responses `reasoning_summary_text.done`); what only earlier chunks
    /// tell, the codec's [`AnswerState`] marks.
    pub thinking_done: bool,
    /// The chunk carries tool calls: like text, they end the thinking.
    pub tool_calls: bool,
    pub usage: Option<Usage>,
    /// OpenAI's usage chunk: no choices, only usage.
    pub usage_only: bool,
}

impl View {
    pub fn get(&self, channel: Channel) -> Option<&str> {
        match channel {
            Channel::Text => self.text.as_deref(),
            Channel::Thinking => self.thinking.as_deref(),
            Channel::ToolArguments => self.tool_arguments.as_deref(),
        }
    }

    pub(super) fn set(&mut self, channel: Channel, value: String) {
        match channel {
            Channel::Text => self.text = Some(value),
            Channel::Thinking => self.thinking = Some(value),
            Channel::ToolArguments => self.tool_arguments = Some(value),
        }
    }

    /// Everything but `channel` reads the same in both views.
    pub(super) fn same_but(&self, other: &View, channel: Channel) -> bool {
        Channel::ALL
            .into_iter()
            .filter(|c| *c != channel)
            .all(|c| self.get(c) == other.get(c))
            && self.done == other.done
            && self.thinking_done == other.thinking_done
            && self.tool_calls == other.tool_calls
            && self.usage == other.usage
            && self.usage_only == other.usage_only
    }
}

/// One API's answers: how to read, patch and make its chunks. Adding a
/// channel adds a case to `read`, `splice_key`, `place` and `synthesize`
/// of each codec; adding an API is one more implementation and a line in
/// the route table (`routes::classify`).
pub trait Codec: Send + Sync + 'static {
    /// For logs and tests.
    fn name(&self) -> &'static str;

    /// How the API frames a streamed answer: SSE events (the OpenAI and
    /// Anthropic APIs); Ollama's own API overrides it with NDJSON lines.
    fn stream_format(&self) -> Format {
        Format::Sse
    }

    /// Reads a chunk's JSON (a line, an event's data, a body). Anything not
    /// of the API's shape reads as nothing (no text, no usage, not done).
    fn read(&self, json: &[u8], kind: Kind) -> View;

    /// False when the raw chunk cannot carry token counts (no parse).
    fn may_carry_usage(&self, raw: &[u8]) -> bool;

    /// Whether the API has `channel` at all.
    fn carries(&self, channel: Channel) -> bool {
        let _ = channel;
        true
    }

    /// The object key (`"name":`) whose JSON string holds `channel` in a
    /// chunk of `kind`, for the in-place splice; `None`: always the tree.
    fn splice_key(&self, channel: Channel, kind: Kind) -> Option<&'static [u8]>;

    /// The arguments of each tool call in the tree `v` of a chunk of `kind`,
    /// in order: a JSON string (OpenAI's, the Responses API's) or an object
    /// (Ollama's, Anthropic's). What [`Channel::ToolArguments`] reads and
    /// rewrites; none on an API without tool calls.
    fn tool_arguments<'v>(&self, v: &'v mut Value, kind: Kind) -> Vec<&'v mut Value> {
        let _ = (v, kind);
        Vec::new()
    }

    /// Puts `value` as `channel` into the tree `v` of a chunk of `kind`
    /// (`had`: the chunk carried that channel). `false` when the chunk has
    /// no place for it: then a chunk of the API goes before it instead.
    fn place(&self, v: &mut Value, channel: Channel, kind: Kind, had: bool, value: &str) -> bool;

    /// The bytes of chunks of the API carrying `pieces` (what hooks put,
    /// in order) of `channel`, to go before a chunk of `kind` whose tree is
    /// `near` (they name the same item, model, block…).
    fn synthesize(
        &self,
        near: Option<&Value>,
        kind: Kind,
        channel: Channel,
        pieces: &[String],
    ) -> Vec<u8>;

    /// The state one answer of the API needs, cut into chunks of `kind`.
    fn answer(&self, kind: Kind) -> Option<Box<dyn AnswerState>>;

    /// What the request needs changed for its answer to be filtered (see
    /// `openai`); most APIs need nothing.
    fn plan_request(&self, stream: bool, body: &[u8]) -> UsagePlan {
        let _ = (stream, body);
        UsagePlan::KEEP
    }
}

impl fmt::Debug for dyn Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the response stage changes about a request to get its usage.
#[derive(Debug, PartialEq, Eq)]
pub struct UsagePlan {
    /// The body to forward instead, when it had to be changed.
    pub body: Option<Bytes>,
    /// Drop the usage chunk on the way back: the client did not ask for it.
    pub hide_usage_chunk: bool,
}

impl UsagePlan {
    pub const KEEP: UsagePlan = UsagePlan {
        body: None,
        hide_usage_chunk: false,
    };
}

/// What one answer of an API keeps between its chunks.
pub trait AnswerState: Send {
    /// A chunk on its way to the hooks, in order (mark what only earlier
    /// chunks tell: where the text or thinking ends).
    fn before_hooks(&mut self, chunk: &mut Chunk) {
        let _ = chunk;
    }

    /// A chunk after the hooks, on its way out, in order (fix what the
    /// hooks' changes left stale: copies of the text, sequence numbers,
    /// token-by-token fields).
    fn after_hooks(&mut self, chunk: &mut Chunk) {
        let _ = chunk;
    }
}

/// A typed parse of a JSON object; `None` for anything else. Valid UTF-8
/// (every chunk Ollama writes) is checked once, so the parser does not
/// check each string again.
///
/// Boxed where it is made: the readings are large structs of borrowed
/// fields, which every layer of the parse would otherwise copy again.
pub fn typed<'a, P: Deserialize<'a>>(json: &'a [u8]) -> Option<Box<P>> {
    let parsed = match std::str::from_utf8(json) {
        Ok(text) => serde_json::from_str::<Obj<Box<P>>>(text),
        Err(_) => serde_json::from_slice::<Obj<Box<P>>>(json),
    };
    parsed.ok()?.0
}

/// A leaf the codecs read, which reads as [`Scalar::Other`] when it holds
/// something of another type, so one odd field (OpenAI content parts
/// instead of a string) does not hide the rest of a chunk.
#[derive(Debug, Default)]
pub enum Scalar<'a> {
    Str(Cow<'a, str>),
    U64(u64),
    Bool(bool),
    #[default]
    Other,
}

impl<'a> Scalar<'a> {
    pub fn str(self) -> Option<Cow<'a, str>> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn u64(&self) -> Option<u64> {
        match self {
            Scalar::U64(n) => Some(*n),
            _ => None,
        }
    }

    pub fn is_true(&self) -> bool {
        matches!(self, Scalar::Bool(true))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Scalar<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(s)))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
                Ok(Scalar::U64(n))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
                Ok(u64::try_from(n).map_or(Scalar::Other, Scalar::U64))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(b))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The scalars a lenient reading skips: they read as `$none`.
macro_rules! skip_scalars {
    ($none:expr) => {
        fn visit_borrowed_str<E>(self, _: &'de str) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($none)
        }
    };
}

/// An object the codecs read into `T`, or `None` when the field holds
/// something else (an error line's `message` is not a chat message).
#[derive(Debug)]
pub struct Obj<T>(pub Option<T>);

impl<T> Default for Obj<T> {
    fn default() -> Self {
        Obj(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|t| Obj(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Obj(None))
            }
            skip_scalars!(Obj(None));
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A list the codecs read, its objects read into `T` (other items
/// skipped); empty when the field holds something else.
#[derive(Debug)]
pub struct List<T>(pub Vec<T>);

impl<T> Default for List<T> {
    fn default() -> Self {
        List(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = List<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(Obj(item)) = seq.next_element::<Obj<T>>()? {
                    items.extend(item);
                }
                Ok(List(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(List(Vec::new()))
            }
            skip_scalars!(List(Vec::new()));
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The first object of a list, the others skipped without being collected
/// (no allocation per chunk), and how many items the list has.
#[derive(Debug)]
pub struct First<T> {
    /// Boxed: a chunk's first choice is a large struct of borrowed
    /// fields, and each layer of the typed reading (the list, the object,
    /// the chunk) would move it again; these copies took a fifth of reading
    /// an OpenAI event.
    pub first: Option<Box<T>>,
    pub len: usize,
    /// The field held a list.
    pub list: bool,
}

impl<T> Default for First<T> {
    fn default() -> Self {
        First {
            first: None,
            len: 0,
            list: false,
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for First<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Option<First<T>>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut list = First {
                    list: true,
                    ..First::default()
                };
                if let Some(Obj(first)) = seq.next_element::<Obj<Box<T>>>()? {
                    (list.first, list.len) = (first, 1);
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    list.len += 1;
                }
                Ok(Some(list))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(None)
            }
            skip_scalars!(None);
        }
        // Not a list reads as an absent one.
        Ok(d.deserialize_any(V(std::marker::PhantomData))?
            .unwrap_or_default())
    }
}

/// Where `key` (one of the codecs' splice keys) first is in `haystack`.
/// The searcher is built once per thread and key: building it took about
/// as long as the search.
fn find_key(key: &'static [u8], haystack: &[u8]) -> Option<usize> {
    std::thread_local! {
        static FINDERS: std::cell::RefCell<Vec<memchr::memmem::Finder<'static>>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    FINDERS.with_borrow_mut(|finders| {
        let i = match finders.iter().position(|f| f.needle() == key) {
            Some(i) => i,
            None => {
                finders.push(memchr::memmem::Finder::new(key));
                finders.len() - 1
            }
        };
        finders[i].find(haystack)
    })
}

/// `raw` with the JSON string value of the first object key `key`
/// (`"name":`, quotes and colon included) replaced by `text`. `None` when
/// there is no such key with a string value.
pub fn splice_string(raw: &[u8], key: &'static [u8], text: &str) -> Option<Vec<u8>> {
    let mut from = 0;
    while let Some(found) = find_key(key, &raw[from..]) {
        let at = from + found;
        from = at + 1;
        // A key follows `{` or `,`; anything else is inside a longer name.
        let prev = raw[..at].iter().rev().find(|b| !b.is_ascii_whitespace());
        if !matches!(prev, Some(b'{' | b',')) {
            continue;
        }
        let mut start = at + key.len();
        while raw.get(start)?.is_ascii_whitespace() {
            start += 1;
        }
        if raw[start] != b'"' {
            return None;
        }
        let mut end = start + 1;
        loop {
            match raw.get(end)? {
                b'\\' => end += 2,
                b'"' => break,
                _ => end += 1,
            }
        }
        let mut out = Vec::with_capacity(raw.len() + text.len());
        out.extend_from_slice(&raw[..start]);
        // Serializing a str cannot fail.
        serde_json::to_writer(&mut out, text).ok()?;
        out.extend_from_slice(&raw[end + 1..]);
        return Some(out);
    }
    None
}

/// The [`Channel::ToolArguments`] text of a chunk whose JSON is `json`:
/// each call's arguments (see [`Codec::tool_arguments`]) as JSON text, a
/// string's as it is and an object compact, one line per call. Compact JSON
/// has no raw line break (one inside a string is written `\n`), so the
/// lines tell the calls apart. Parses the chunk again: read only for chunks
/// that carry tool calls.
pub fn arguments_text(codec: &dyn Codec, json: &[u8], kind: Kind) -> Option<String> {
    let mut v = object_tree(json)?;
    let slots = codec.tool_arguments(&mut v, kind);
    if slots.is_empty() {
        return None;
    }
    let lines: Vec<String> = slots
        .iter()
        .map(|a| match a {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    Some(lines.join("\n"))
}

/// The JSON object in `data` as a tree: a key twice is the last one, as
/// JSON readers take it, and bytes that are not UTF-8 become U+FFFD (the
/// typed readings skip the fields they do not name unchecked), so a chunk
/// reads — and a rewrite lands — the same however odd its bytes.
pub fn object_tree(data: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Value>(data)
        .or_else(|_| serde_json::from_str(&String::from_utf8_lossy(data)))
        .ok()
        .filter(Value::is_object)
}

/// Writes `text` (see [`arguments_text`]) back into `slots`: line `i` to
/// call `i`, a line missing as empty, lines beyond the last call onto the
/// last. A slot that held a string gets the line as a string; one that
/// held an object gets the line parsed, or — not JSON, which a hook that
/// edits JSON carelessly makes — the line as a string, so the client sees
/// what the hook wrote rather than what it meant to hide. `false`: no call.
pub fn set_arguments(slots: Vec<&mut Value>, text: &str) -> bool {
    let n = slots.len();
    if n == 0 {
        return false;
    }
    let mut lines: Vec<&str> = text.splitn(n, '\n').collect();
    lines.resize(n, "");
    for (slot, line) in slots.into_iter().zip(lines) {
        *slot = match slot {
            Value::String(_) => Value::String(line.to_owned()),
            _ => serde_json::from_str(line).unwrap_or_else(|_| Value::String(line.to_owned())),
        };
    }
    true
}

/// The values at `key` of the objects in the list at `pointer` in `v`
/// (e.g. each call's `function.arguments`: `("/tool_calls", "/function/arguments")`).
pub fn each_at<'v>(v: &'v mut Value, pointer: &str, key: &str) -> Vec<&'v mut Value> {
    v.pointer_mut(pointer)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(|item| item.pointer_mut(key))
        .collect()
}

/// An SSE event: its `event:`/`id:` lines (`lines`, each with its line
/// end), then `json` as its data.
pub fn frame_event(out: &mut Vec<u8>, lines: &[u8], json: &[u8]) {
    out.extend_from_slice(lines);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
}

/// `json` framed as a chunk of `kind` to insert: an SSE event or a line.
pub fn frame(kind: Kind, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 8);
    match kind {
        Kind::Event => frame_event(&mut out, &[], json),
        Kind::Line | Kind::Whole => {
            out.extend_from_slice(json);
            out.push(b'\n');
        }
    }
    out
}

/// The lines of an SSE event before its first `data:` line (`event:`,
/// `id:`…), kept when the data is rewritten: the event APIs name every
/// event there, and their clients dispatch on it.
pub fn event_lines(raw: &[u8]) -> &[u8] {
    // Lines end at `\n` or `\r`, as `framing::sse_data` reads them.
    let mut at = 0;
    while at < raw.len() && !raw[at..].starts_with(b"data") {
        match memchr::memchr2(b'\n', b'\r', &raw[at..]) {
            Some(n) => at += n + 1,
            None => return &[],
        }
    }
    if at >= raw.len() {
        return &[]; // no data line: nothing before it to keep
    }
    &raw[..at]
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where the model's thinking ends, on the APIs whose chunks do not say
/// (Ollama's `/api/generate` and `/api/chat`, OpenAI's
/// `/v1/chat/completions`): they stream the thinking before the text with
/// no event closing it, so the thinking has ended when a chunk after it
/// carries text or tool calls (Ollama's chunk may carry the last thinking
/// and the first text at once; OpenAI's shape splits it in two chunks, the
/// reasoning one with `"content":""`, which is not text). Thinking a hook
/// holds back must go out on that chunk at the latest. The model may think
/// again later (after a tool call), and the next such chunk is marked
/// again. Until thinking is seen it parses nothing: a chunk without the
/// field's name (`marker`) carries none.
#[derive(Debug)]
pub struct ThinkingEnd {
    marker: &'static memchr::memmem::Finder<'static>,
    /// Thinking was seen, and no text or tool call since.
    thinking: bool,
}

impl ThinkingEnd {
    pub fn new(marker: &'static memchr::memmem::Finder<'static>) -> ThinkingEnd {
        ThinkingEnd {
            marker,
            thinking: false,
        }
    }

    /// One chunk on its way to the hooks, in order.
    pub fn mark(&mut self, chunk: &mut Chunk) {
        if !self.thinking && !chunk.raw_has(self.marker) {
            return;
        }
        if chunk.thinking().is_some_and(|t| !t.is_empty()) {
            self.thinking = true;
        }
        let answers = chunk.text().is_some_and(|t| !t.is_empty()) || chunk.has_tool_calls();
        if self.thinking && answers {
            chunk.set_thinking_done(true);
            self.thinking = false;
        }
    }
}

#[cfg(test)]
mod tests;
