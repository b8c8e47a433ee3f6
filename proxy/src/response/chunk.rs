//! One chunk of an answer, as the response hooks see it, whatever its API:
//! its text and the model's thinking (two channels, each in one normalized
//! form), its token usage, whether generation (or the thinking) ends with
//! it — and rewriting a channel back into the API's own JSON. What is
//! API-specific, the chunk asks its [`Codec`].
//!
//! A chunk no hook changed goes out as the very bytes that came in. A
//! change is spliced into those bytes when it can be (the channel's JSON
//! string replaced, key order and all), else made in a JSON tree of the
//! chunk, else — the chunk has no place for it — carried by chunks of the
//! API the codec makes, sent just before this one.

use std::borrow::Cow;
use std::cell::OnceCell;

use bytes::{BufMut, Bytes, BytesMut};
use memchr::memmem::Finder;
use serde_json::Value;

use super::codec::{Channel, Codec, Kind, Usage, View};
use super::wire::{event_lines, frame_event, object_tree};
use crate::framing::sse_data;

pub struct Chunk {
    raw: Bytes,
    kind: Kind,
    codec: &'static dyn Codec,
    /// What the hooks see, read on first use: a chunk every hook passes
    /// without looking is never parsed.
    view: OnceCell<View>,
    /// The chunk's bytes with each duplicated key once (the last, as JSON
    /// readers take it), when the codec could read only that form (see
    /// [`Chunk::view`]); what goes out in place of `raw` then.
    canonical: OnceCell<Bytes>,
    /// The chunk's JSON as a tree, built only to rewrite it; `None` when it
    /// is not a JSON object (`[DONE]`, comments) or not built yet.
    tree: Option<Value>,
    /// `tree` was changed: `raw` is rebuilt from it.
    changed: bool,
    /// [`Chunk::done`] and [`Chunk::thinking_done`] as the answer's earlier
    /// chunks tell (see [`super::codec::AnswerState`]), over what the chunk
    /// alone says.
    done_mark: Option<bool>,
    thinking_done_mark: Option<bool>,
    /// Per channel ([`Channel::index`]): a hook changed the chunk's own
    /// text (thinking).
    edited: [bool; Channel::COUNT],
    /// Per channel: what hooks put on this chunk that it has no place for,
    /// in order, and joined; it goes out in chunks of the API before this one.
    pieces: [Vec<String>; Channel::COUNT],
    joined: [Option<String>; Channel::COUNT],
    /// Per channel: those chunks' bytes.
    inserted: [Vec<u8>; Channel::COUNT],
    /// All of them, thinking first (the model thinks before it answers).
    before: Option<Vec<u8>>,
}

impl Chunk {
    pub fn new(raw: Bytes, kind: Kind, codec: &'static dyn Codec) -> Chunk {
        Chunk {
            raw,
            kind,
            codec,
            view: OnceCell::new(),
            canonical: OnceCell::new(),
            tree: None,
            changed: false,
            done_mark: None,
            thinking_done_mark: None,
            edited: [false; Channel::COUNT],
            pieces: Default::default(),
            joined: Default::default(),
            inserted: Default::default(),
            before: None,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn codec(&self) -> &'static dyn Codec {
        self.codec
    }

    /// The JSON of the chunk: the line, the SSE event's data, the body.
    pub(super) fn data(&self) -> Option<Cow<'_, [u8]>> {
        match self.kind {
            Kind::Event => sse_data(&self.raw),
            Kind::Line | Kind::Whole => Some(Cow::Borrowed(&self.raw[..])),
        }
    }

    fn view(&self) -> &View {
        self.view.get_or_init(|| {
            let Some(data) = self.data() else {
                return View::default();
            };
            let view = self.codec.read(&data, self.kind);
            if view != View::default() {
                return view;
            }
            // Nothing of the API's read, yet it may be JSON with a key twice
            // (which the typed reading refuses and clients read last-wins)
            // or bytes that are not UTF-8: Go writes neither, something
            // posing as Ollama could. Then the hooks read, and the client
            // gets, the form of `object_tree`. Only chunks that read as
            // nothing pay for the check.
            let Some(tree) = object_tree(&data) else {
                return view;
            };
            let json = serde_json::to_vec(&tree).unwrap_or_default();
            let canonical = self.codec.read(&json, self.kind);
            if canonical == view {
                return view;
            }
            let _ = self.canonical.set(self.framed(&json));
            canonical
        })
    }

    /// `json` framed as this chunk is: a line, an event with this chunk's
    /// `event:` lines, a body (with the line end it came with).
    fn framed(&self, json: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(json.len() + 8);
        match self.kind {
            Kind::Line => {
                out.extend_from_slice(json);
                out.push(b'\n');
            }
            Kind::Event => frame_event(&mut out, event_lines(&self.raw), json),
            Kind::Whole => {
                out.extend_from_slice(json);
                if self.raw.ends_with(b"\n") {
                    out.push(b'\n');
                }
            }
        }
        Bytes::from(out)
    }

    /// True when the chunk's bytes (as they came) contain the `finder`'s needle.
    pub(super) fn raw_has(&self, finder: &Finder<'_>) -> bool {
        finder.find(&self.raw).is_some()
    }

    /// The tree of the chunk's JSON, built on first use.
    pub(super) fn tree(&mut self) -> Option<&mut Value> {
        if self.tree.is_none() {
            self.tree = self.data().and_then(|d| object_tree(&d));
        }
        self.tree.as_mut()
    }

    /// Marks the tree (see [`Chunk::tree`]) as changed: `raw` is rebuilt
    /// from it. What the hooks read of the chunk stays as it was.
    pub(super) fn tree_changed(&mut self) {
        if self.tree.is_some() {
            self.changed = true;
        }
    }

    /// Removes `key` from the object at `parent` (a JSON pointer) of the
    /// chunk's tree; `raw` is rebuilt from it when there was one.
    pub(super) fn remove_field(&mut self, parent: &str, key: &str) {
        let removed = self
            .tree()
            .and_then(|v| v.pointer_mut(parent))
            .and_then(Value::as_object_mut)
            .is_some_and(|o| o.remove(key).is_some());
        if removed {
            self.changed = true;
        }
    }

    /// The generated text of this chunk, if it carries any.
    pub fn text(&self) -> Option<&str> {
        self.view().text.as_deref()
    }

    /// The text, when something read it already ([`Chunk::text`] parses on
    /// first use; this never does).
    pub fn text_read(&self) -> Option<&str> {
        self.view.get()?.text.as_deref()
    }

    /// The model's thinking (reasoning) in this chunk, if it carries any,
    /// wherever its API puts it (see the codecs).
    pub fn thinking(&self) -> Option<&str> {
        self.view().thinking.as_deref()
    }

    /// The thinking, when something read the chunk already (never parses).
    pub fn thinking_read(&self) -> Option<&str> {
        self.view.get()?.thinking.as_deref()
    }

    /// True when the model's thinking ends with this chunk: thinking a hook
    /// holds back must go out on this chunk at the latest. Generation's end
    /// ends it; so does what the chunk or the answer's earlier chunks tell
    /// (see the codecs). Always true whole.
    pub fn thinking_done(&self) -> bool {
        self.done()
            || self
                .thinking_done_mark
                .unwrap_or_else(|| self.view().thinking_done)
    }

    /// Sets [`Chunk::thinking_done`], for what only earlier chunks tell.
    pub(super) fn set_thinking_done(&mut self, done: bool) {
        self.thinking_done_mark = Some(done);
    }

    /// The arguments of the chunk's tool calls, one line per call (see
    /// [`Channel::ToolArguments`]), if it carries any.
    pub fn tool_arguments(&self) -> Option<&str> {
        self.view().tool_arguments.as_deref()
    }

    /// True when the chunk carries tool calls.
    pub(super) fn has_tool_calls(&self) -> bool {
        self.view().tool_calls
    }

    /// True when the chunk carries output the model generated: text,
    /// thinking or tool calls (as Ollama sent it; the hooks read the same
    /// parse, so asking costs nothing more).
    pub(super) fn generated(&self) -> bool {
        let view = self.view();
        view.text.as_deref().is_some_and(|t| !t.is_empty())
            || view.thinking.as_deref().is_some_and(|t| !t.is_empty())
            || view.tool_calls
    }

    /// True when generation ends with this chunk (see the WIT `chunk.done`).
    pub fn done(&self) -> bool {
        self.kind == Kind::Whole || self.done_mark.unwrap_or_else(|| self.view().done)
    }

    /// Sets [`Chunk::done`], for what only earlier chunks tell.
    pub(super) fn set_done(&mut self, done: bool) {
        self.done_mark = Some(done);
    }

    /// The token counts in this chunk. Chunks that cannot hold them are not
    /// parsed to find out.
    pub fn usage(&self) -> Option<Usage> {
        if !self.codec.may_carry_usage(&self.raw) {
            return None;
        }
        self.view().usage
    }

    /// True for the extra chunk OpenAI streams carry with
    /// `stream_options.include_usage`: no choices, only usage.
    pub fn is_usage_only(&self) -> bool {
        self.kind == Kind::Event && self.codec.may_carry_usage(&self.raw) && self.view().usage_only
    }

    /// The chunk's bytes as they are now (rewritten or not), without any
    /// chunk inserted before it.
    pub fn raw(&self) -> Bytes {
        let Some(v) = self.tree.as_ref().filter(|_| self.changed) else {
            return self.canonical.get().unwrap_or(&self.raw).clone();
        };
        // Serializing a Value cannot fail; keys come out sorted (serde_json
        // has no order-preserving map here), which JSON readers ignore.
        self.framed(&serde_json::to_vec(v).unwrap_or_default())
    }

    /// [`Chunk::raw`], borrowed while the chunk is not rebuilt from its
    /// tree: what a hook reads, with no reference count touched per hook.
    pub fn raw_bytes(&self) -> Cow<'_, [u8]> {
        match self.tree.as_ref().filter(|_| self.changed) {
            None => Cow::Borrowed(self.canonical.get().unwrap_or(&self.raw)),
            Some(_) => Cow::Owned(self.raw().to_vec()),
        }
    }

    /// Replaces the generated text. A chunk with no place for text (a usage
    /// chunk, `[DONE]`, an error line) gets a text chunk of its API sent
    /// just before it instead. `false` where the API has no text.
    pub fn set_text(&mut self, text: String) -> bool {
        self.set(Channel::Text, text)
    }

    /// Replaces the model's thinking, as [`Chunk::set_text`] the text.
    /// `false` where the API has no thinking (`/v1/completions`).
    pub fn set_thinking(&mut self, thinking: String) -> bool {
        self.set(Channel::Thinking, thinking)
    }

    /// Replaces the arguments of the chunk's tool calls (see
    /// [`Channel::ToolArguments`]). `false` when it carries no tool call:
    /// arguments have no place elsewhere.
    pub fn set_tool_arguments(&mut self, arguments: String) -> bool {
        self.set(Channel::ToolArguments, arguments)
    }

    /// Replaces `channel`: the fast splice, else the tree, else chunks of
    /// the API inserted before this one.
    pub fn set(&mut self, channel: Channel, value: String) -> bool {
        if self.view().get(channel) == Some(value.as_str()) {
            return true;
        }
        if !self.codec.carries(channel) {
            return false;
        }
        if channel == Channel::ToolArguments {
            return self.set_arguments(value);
        }
        let had = self.view().get(channel).is_some();
        // Thinking is spliced only where it is: a look-alike key elsewhere
        // (a whole body's other copies) is not its place.
        if !self.changed && (had || channel == Channel::Text) && self.splice(channel, &value) {
            self.edited[channel.index()] = true;
            return true;
        }
        let (codec, kind) = (self.codec, self.kind);
        let placed = self
            .tree()
            .is_some_and(|v| codec.place(v, channel, kind, had, &value));
        if placed {
            self.changed = true;
            self.edited[channel.index()] = true;
            let mut view = self.view().clone();
            view.set(channel, value);
            self.view = OnceCell::from(view);
            return true;
        }
        self.insert_before(channel, value)
    }

    /// The tool calls' arguments, rewritten in the tree: they are JSON (an
    /// object on some APIs), which a splice of one string cannot rewrite.
    fn set_arguments(&mut self, value: String) -> bool {
        if self.view().tool_arguments.is_none() {
            return false;
        }
        let (codec, kind) = (self.codec, self.kind);
        let placed = self
            .tree()
            .is_some_and(|v| super::wire::set_arguments(codec.tool_arguments(v, kind), &value));
        if placed {
            self.changed = true;
            self.edited[Channel::ToolArguments.index()] = true;
            let mut view = self.view().clone();
            view.set(Channel::ToolArguments, value);
            self.view = OnceCell::from(view);
        }
        placed
    }

    /// The fast rewrite: the channel's JSON string replaced in the bytes as
    /// they are, with no tree built. Taken only when reading the result back
    /// gives the new value and nothing else changed; otherwise (a missing
    /// field, a look-alike key) the tree does it.
    fn splice(&mut self, channel: Channel, value: &str) -> bool {
        if self.canonical.get().is_some() {
            return false; // the bytes as they came are not what was read
        }
        let Some(key) = self.codec.splice_key(channel, self.kind) else {
            return false;
        };
        let Some(spliced) = super::wire::splice_string(&self.raw, key, value) else {
            return false;
        };
        let candidate = Chunk::new(Bytes::from(spliced), self.kind, self.codec);
        let after = candidate.view();
        if after.get(channel) != Some(value) || !after.same_but(self.view(), channel) {
            return false;
        }
        self.view = OnceCell::from(after.clone());
        self.raw = candidate.raw;
        self.tree = None;
        true
    }

    /// Puts `value` of `channel` in chunks of the API sent before this one;
    /// `false` when the API has no chunk to carry it there (a whole body).
    fn insert_before(&mut self, channel: Channel, value: String) -> bool {
        if self.kind == Kind::Whole {
            // One body: there is no "before" (its text has one place, which
            // `place` takes when the body is an answer).
            return false;
        }
        self.joined[channel.index()]
            .get_or_insert_with(String::new)
            .push_str(&value);
        self.pieces[channel.index()].push(value);
        let near = self.tree.as_ref();
        let bytes = self
            .codec
            .synthesize(near, self.kind, channel, &self.pieces[channel.index()]);
        let carried = !bytes.is_empty();
        self.set_inserted(channel, bytes);
        carried
    }

    /// Replaces the bytes of what goes before this chunk for `channel`
    /// (a codec that numbers its events renumbers them).
    pub(super) fn set_inserted(&mut self, channel: Channel, bytes: Vec<u8>) {
        self.inserted[channel.index()] = bytes;
        let all: Vec<u8> = Channel::ALL
            .iter()
            .flat_map(|c| self.inserted[c.index()].iter().copied())
            .collect();
        self.before = (!all.is_empty()).then_some(all);
    }

    /// Appends what goes to the client for this chunk to `out`.
    pub fn write_to(&self, out: &mut BytesMut) {
        if let Some(before) = &self.before {
            out.put_slice(before);
        }
        out.put_slice(&self.raw());
    }

    /// The chunks a hook's text made the host insert before this one, if any.
    pub fn inserted(&self) -> Option<&[u8]> {
        self.before.as_deref()
    }

    /// The text of the chunks inserted before this one, if any.
    pub fn inserted_text(&self) -> Option<&str> {
        self.inserted_of(Channel::Text)
    }

    /// The thinking of the chunks inserted before this one, if any.
    pub fn inserted_thinking(&self) -> Option<&str> {
        self.inserted_of(Channel::Thinking)
    }

    pub(super) fn inserted_of(&self, channel: Channel) -> Option<&str> {
        self.joined[channel.index()].as_deref()
    }

    /// True when a hook changed this chunk's own text.
    pub fn text_edited(&self) -> bool {
        self.edited[Channel::Text.index()]
    }

    /// True when a hook changed this chunk's own thinking.
    pub fn thinking_edited(&self) -> bool {
        self.edited[Channel::Thinking.index()]
    }

    /// True when a hook changed this chunk's tool-call arguments.
    pub fn tool_arguments_edited(&self) -> bool {
        self.edited[Channel::ToolArguments.index()]
    }

    /// True when a hook changed any channel of this chunk's own (not what
    /// went before it).
    pub(super) fn own_edited(&self) -> bool {
        self.edited.iter().any(|e| *e)
    }

    /// True when a hook changed this chunk's text or thinking, or put text
    /// or thinking before it: what goes out differs from what Ollama sent.
    pub(super) fn changed_by_hooks(&self) -> bool {
        self.edited.iter().any(|e| *e) || self.joined.iter().any(Option::is_some)
    }

    /// The name on an SSE event's `event:` line, when it starts with one
    /// (the event APIs name every event, so the name is known unparsed).
    pub fn event_name(&self) -> Option<&str> {
        let rest = self.raw.strip_prefix(b"event:")?;
        let end = memchr::memchr2(b'\n', b'\r', rest)?;
        std::str::from_utf8(&rest[..end]).ok().map(str::trim)
    }

    /// An SSE event named `name` carrying `json`, as the event APIs send
    /// them; for tests.
    #[cfg(test)]
    pub(super) fn named_event(codec: &'static dyn Codec, name: &str, json: &str) -> Chunk {
        let raw = format!("event: {name}\ndata: {json}\n\n");
        Chunk::new(Bytes::from(raw), Kind::Event, codec)
    }

    /// The JSON body of this (whole) chunk as it is now, for a rebuilt
    /// non-streaming answer.
    pub fn into_whole_body(self) -> Bytes {
        self.raw()
    }
}

#[cfg(test)]
mod tests;
