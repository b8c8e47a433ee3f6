//! A streamed `/v1/responses` answer carries its text twice: once in
//! `response.output_text.delta` events, then whole again in
//! `response.output_text.done` (`text`), `response.content_part.done`
//! (`part.text`), `response.output_item.done` (`item.content[].text`) and
//! the final `response.completed` (`response.output[].content[].text`)
//! (openai/responses.go, `processCompletion`). When a hook rewrote a delta
//! (a redaction), those copies must say what the client got — the rewritten
//! deltas joined — or the original text reaches the client at the end.
//!
//! A [`Transcript`] follows one answer's chunks after the hooks, in the
//! order they are sent: it keeps the text of each message item as sent and,
//! once any text event was rewritten or inserted, rewrites the copies. Only
//! streamed Responses answers get one. Until a hook changes something it
//! parses nothing: it appends the text the hooks already read to a string,
//! and tells events apart by their `event:` line. (A chunk no hook read
//! went past hooks that had all stopped looking — `pass-rest`, or left out
//! after a failure — and none of them can change a later chunk either, so
//! nothing unread is missed before a change; after one, every delta is read.)
//! Other APIs send their text once (a whole body too, where `set_text`
//! places it), and pay nothing.
//!
//! The thinking is repeated the same way: sent in
//! `response.reasoning_summary_text.delta` events, then whole in
//! `response.reasoning_summary_text.done` (`text`), the reasoning item of
//! `response.output_item.done` (`item.summary[].text` and
//! `item.encrypted_content`, where Ollama puts the plain thinking) and of
//! `response.completed` (`finishReasoning`, `processCompletion`). The
//! transcript keeps each reasoning item's thinking as sent too, and
//! rewrites those copies once a hook changed or inserted thinking.
//!
//! Every event of a streamed Responses answer also has a `sequence_number`,
//! counting up by one. A text event the host inserts (see [`event`]) takes
//! the number of the event it goes before, and that event and every later
//! one are renumbered one up; until an event is inserted, nothing is.

use serde_json::Value;

use super::super::chunk::Chunk;
use super::super::codec::{AnswerState, Channel};
use super::{ARGUMENTS_DELTA, event, fill, fill_reasoning_item, message_item, reasoning_item};

#[derive(Debug, Default)]
pub struct Transcript {
    /// The message items in the order they were added: id, text sent.
    pub(super) items: Vec<(String, String)>,
    /// A hook changed the text of the answer: the copies need rewriting.
    diverged: bool,
    /// The reasoning items in the order they were added: id, thinking sent.
    pub(super) thoughts: Vec<(String, String)>,
    /// A hook changed the thinking: its copies need rewriting.
    thoughts_diverged: bool,
    /// The function calls' arguments as sent: item id, arguments.
    calls: Vec<(String, String)>,
    /// A hook changed a call's arguments: their copies need rewriting.
    calls_diverged: bool,
    /// The last reasoning item added: id, `output_index` (the item thinking
    /// inserted before an event that names none goes to).
    reasoning: Option<(String, u64)>,
    /// Events inserted so far: the later events' sequence numbers go up by as many.
    shift: u64,
}

impl AnswerState for Transcript {
    fn after_hooks(&mut self, chunk: &mut Chunk) {
        self.sent(chunk);
    }
}

impl Transcript {
    /// One chunk on its way to the client, after the hooks: its text is
    /// recorded, and a copy of the text is made to match what was sent.
    pub fn sent(&mut self, chunk: &mut Chunk) {
        if self.shift > 0 || chunk.inserted().is_some() {
            self.renumber(chunk);
        }
        if let Some(inserted) = chunk.inserted_thinking().map(str::to_owned) {
            // Inserted before this chunk, in the reasoning item it names.
            let known = self.reasoning.as_ref().map(|(i, n)| (i.as_str(), *n));
            let (id, _) = reasoning_item(chunk.tree().map(|v| &*v), known);
            entry(&mut self.thoughts, &id).push_str(&inserted);
            self.thoughts_diverged = true;
        }
        if let Some(inserted) = chunk.inserted_text().map(str::to_owned) {
            // Inserted before this chunk, in the item this chunk names.
            let (id, _) = message_item(chunk.tree().map(|v| &*v));
            self.item(&id).push_str(&inserted);
            self.diverged = true;
        }
        if chunk.event_name() == Some(ARGUMENTS_DELTA) {
            // A call's arguments, whole (Ollama sends them in one delta).
            let id = chunk
                .tree()
                .and_then(|v| v.get("item_id"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let sent = chunk.tool_arguments().unwrap_or("").to_owned();
            entry(&mut self.calls, &id).push_str(&sent);
            self.calls_diverged |= chunk.tool_arguments_edited();
            return;
        }
        let is_thought = if self.thoughts_diverged {
            chunk.thinking().is_some()
        } else {
            chunk.thinking_read().is_some()
        };
        if is_thought {
            if self.thoughts.is_empty() {
                // A delta without its `output_item.added`: use the id it names.
                let (id, _) = reasoning_item(chunk.tree().map(|v| &*v), None);
                entry(&mut self.thoughts, &id);
            }
            if let (Some((_, sent)), Some(t)) = (self.thoughts.last_mut(), chunk.thinking()) {
                sent.push_str(t);
            }
            self.thoughts_diverged |= chunk.thinking_edited();
            return;
        }
        let is_delta = if self.diverged {
            chunk.text().is_some()
        } else {
            chunk.text_read().is_some()
        };
        if is_delta {
            if self.items.is_empty() {
                // A delta without its `output_item.added`: use the id it names.
                let (id, _) = message_item(chunk.tree().map(|v| &*v));
                self.item(&id);
            }
            if let (Some((_, sent)), Some(text)) = (self.items.last_mut(), chunk.text()) {
                sent.push_str(text);
            }
            self.diverged |= chunk.text_edited();
            return;
        }
        match chunk.event_name() {
            Some("response.output_item.added") => {
                let item = chunk.tree().and_then(|v| {
                    let kind = v.pointer("/item/type").and_then(Value::as_str)?;
                    let id = v.pointer("/item/id").and_then(Value::as_str)?;
                    let index = v.get("output_index").and_then(Value::as_u64).unwrap_or(0);
                    Some((kind == "reasoning", id.to_owned(), index))
                });
                match item {
                    Some((false, id, _)) => {
                        self.item(&id);
                    }
                    Some((true, id, index)) => {
                        entry(&mut self.thoughts, &id);
                        self.reasoning = Some((id, index));
                    }
                    None => {}
                }
            }
            Some(
                name @ ("response.output_text.done"
                | "response.content_part.done"
                | "response.reasoning_summary_text.done"
                | "response.function_call_arguments.done"
                | "response.output_item.done"
                | "response.completed"
                | "response.incomplete"
                | "response.failed"),
            ) if self.diverged || self.thoughts_diverged || self.calls_diverged => {
                let name = name.to_owned();
                if let Some(v) = chunk.tree() {
                    self.patch(&name, v);
                    chunk.tree_changed();
                }
            }
            _ => {}
        }
    }

    /// The sequence numbers of `chunk` and of the event inserted before it.
    fn renumber(&mut self, chunk: &mut Chunk) {
        let inserted = chunk.inserted().is_some();
        let seq = chunk
            .tree()
            .and_then(|v| v.get("sequence_number"))
            .and_then(Value::as_u64);
        let Some(seq) = seq else {
            return; // not a numbered event: nothing to follow
        };
        if inserted {
            // The events inserted get the numbers from here on, in the
            // order they go out (thinking, then text).
            let mut n = seq + self.shift;
            let known = self.reasoning.as_ref().map(|(i, n)| (i.as_str(), *n));
            for channel in Channel::ALL {
                let Some(text) = chunk.inserted_of(channel).map(str::to_owned) else {
                    continue;
                };
                let near = chunk.tree().map(|v| &*v);
                let bytes = event(near, channel, &text, Some(n), known);
                chunk.set_inserted(channel, bytes);
                n += 1;
            }
            self.shift = n - seq;
        }
        if let Some(v) = chunk.tree().and_then(Value::as_object_mut) {
            v.insert("sequence_number".into(), (seq + self.shift).into());
            chunk.tree_changed();
        }
    }

    /// The text sent for item `id`, added (empty) when new.
    fn item(&mut self, id: &str) -> &mut String {
        entry(&mut self.items, id)
    }

    /// The text sent for item `id`: nothing, for an item no text event
    /// named (its text never reached the client).
    fn text_of(&self, id: Option<&str>) -> &str {
        sent_of(&self.items, id)
    }

    /// Rewrites the copies of the text and thinking in the tree `v` of
    /// event `name`: each only when a hook changed it.
    fn patch(&self, name: &str, v: &mut Value) {
        let id = v.get("item_id").and_then(Value::as_str).map(str::to_owned);
        let (text, thinking) = (self.diverged, self.thoughts_diverged);
        match name {
            "response.reasoning_summary_text.done" => {
                if thinking {
                    let sent = sent_of(&self.thoughts, id.as_deref()).to_owned();
                    set_text(v, &sent);
                }
            }
            "response.function_call_arguments.done" => {
                if self.calls_diverged {
                    let sent = sent_of(&self.calls, id.as_deref()).to_owned();
                    if let Some(o) = v.as_object_mut() {
                        o.insert("arguments".into(), Value::String(sent));
                    }
                }
            }
            "response.output_text.done" | "response.content_part.done" if !text => {}
            "response.output_text.done" => {
                let text = self.text_of(id.as_deref()).to_owned();
                set_text(v, &text);
            }
            "response.content_part.done" => {
                let text = self.text_of(id.as_deref()).to_owned();
                if let Some(part) = v.get_mut("part") {
                    set_text(part, &text);
                }
            }
            "response.output_item.done" => {
                if let Some(item) = v.get_mut("item") {
                    self.patch_item(item);
                }
            }
            _ => {
                let output = v
                    .pointer_mut("/response/output")
                    .and_then(Value::as_array_mut);
                for item in output.into_iter().flatten() {
                    self.patch_item(item);
                }
            }
        }
    }

    /// A message item: its first `output_text` part gets the text sent, the
    /// others none. A reasoning item: its first `summary_text` part and its
    /// `encrypted_content` get the thinking sent, the other parts none. A
    /// function call: its `arguments` as sent.
    fn patch_item(&self, item: &mut Value) {
        let id = item.get("id").and_then(Value::as_str);
        match item.get("type").and_then(Value::as_str) {
            Some("function_call") if self.calls_diverged => {
                let sent = sent_of(&self.calls, id).to_owned();
                if let Some(o) = item.as_object_mut() {
                    o.insert("arguments".into(), Value::String(sent));
                }
            }
            Some("reasoning") if self.thoughts_diverged => {
                let sent = sent_of(&self.thoughts, id).to_owned();
                fill_reasoning_item(item, &sent);
            }
            Some("message") if self.diverged => {
                let text = self.text_of(id).to_owned();
                let parts = item
                    .get_mut("content")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                    .filter(|p| p.get("type").and_then(Value::as_str) == Some("output_text"));
                fill(parts, "text", &text);
            }
            _ => {}
        }
    }
}

/// What was sent for item `id` in `items`, added (empty) when new.
fn entry<'a>(items: &'a mut Vec<(String, String)>, id: &str) -> &'a mut String {
    let at = match items.iter().position(|(i, _)| i == id) {
        Some(at) => at,
        None => {
            items.push((id.to_owned(), String::new()));
            items.len() - 1
        }
    };
    &mut items[at].1
}

/// What was sent for item `id`: nothing, for an item no event named (its
/// text never reached the client).
fn sent_of<'a>(items: &'a [(String, String)], id: Option<&str>) -> &'a str {
    items
        .iter()
        .find(|(i, _)| Some(i.as_str()) == id)
        .map_or("", |(_, t)| t.as_str())
}

fn set_text(v: &mut Value, text: &str) {
    if let Some(o) = v.as_object_mut() {
        o.insert("text".into(), Value::String(text.into()));
    }
}
