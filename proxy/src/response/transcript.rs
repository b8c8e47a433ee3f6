//! The text an answer actually sent, for the API that repeats it.
//!
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
//! counting up by one. A text event the host inserts (see `events`) takes
//! the number of the event it goes before, and that event and every later
//! one are renumbered one up; until an event is inserted, nothing is.

use serde_json::Value;

use super::chunk::{Chunk, Kind, Shape};
use super::events;

#[derive(Debug, Default)]
pub struct Transcript {
    /// The message items in the order they were added: id, text sent.
    items: Vec<(String, String)>,
    /// A hook changed the text of the answer: the copies need rewriting.
    diverged: bool,
    /// The reasoning items in the order they were added: id, thinking sent.
    thoughts: Vec<(String, String)>,
    /// A hook changed the thinking: its copies need rewriting.
    thoughts_diverged: bool,
    /// The last reasoning item added: id, `output_index` (the item thinking
    /// inserted before an event that names none goes to).
    reasoning: Option<(String, u64)>,
    /// Events inserted so far: the later events' sequence numbers go up by as many.
    shift: u64,
}

impl Transcript {
    /// The transcript an answer of `shape`, cut into chunks of `kind`, needs.
    pub fn of(shape: Shape, kind: Kind) -> Option<Transcript> {
        (shape == Shape::OpenaiResponses && kind == Kind::Event).then(Transcript::default)
    }

    /// One chunk on its way to the client, after the hooks: its text is
    /// recorded, and a copy of the text is made to match what was sent.
    pub fn sent(&mut self, chunk: &mut Chunk) {
        if self.shift > 0 || chunk.inserted().is_some() {
            self.renumber(chunk);
        }
        if let Some(inserted) = chunk.inserted_thinking() {
            // Inserted before this chunk, in the reasoning item it names.
            let inserted = inserted.to_owned();
            let known = self.reasoning.as_ref().map(|(i, n)| (i.as_str(), *n));
            let (id, _) = events::responses_reasoning_item(chunk.tree().map(|v| &*v), known);
            entry(&mut self.thoughts, &id).push_str(&inserted);
            self.thoughts_diverged = true;
        }
        if let Some(inserted) = chunk.inserted_text() {
            // Inserted before this chunk, in the item this chunk names.
            let inserted = inserted.to_owned();
            let (id, _) = events::responses_item(chunk.tree().map(|v| &*v));
            self.item(&id).push_str(&inserted);
            self.diverged = true;
        }
        let is_thought = if self.thoughts_diverged {
            chunk.thinking().is_some()
        } else {
            chunk.thinking_read().is_some()
        };
        if is_thought {
            if self.thoughts.is_empty() {
                // A delta without its `output_item.added`: use the id it names.
                let (id, _) = events::responses_reasoning_item(chunk.tree().map(|v| &*v), None);
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
                let (id, _) = events::responses_item(chunk.tree().map(|v| &*v));
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
                | "response.output_item.done"
                | "response.completed"
                | "response.incomplete"
                | "response.failed"),
            ) if self.diverged || self.thoughts_diverged => {
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
            let known = self.reasoning.as_ref().map(|(i, n)| (i.as_str(), *n));
            self.shift += chunk.number_inserted(seq + self.shift, known);
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
    /// `encrypted_content` get the thinking sent, the other parts none.
    fn patch_item(&self, item: &mut Value) {
        let id = item.get("id").and_then(Value::as_str);
        match item.get("type").and_then(Value::as_str) {
            Some("reasoning") if self.thoughts_diverged => {
                let sent = sent_of(&self.thoughts, id).to_owned();
                events::fill_reasoning_item(item, &sent);
            }
            Some("message") if self.diverged => {
                let text = self.text_of(id).to_owned();
                let parts = item
                    .get_mut("content")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                    .filter(|p| p.get("type").and_then(Value::as_str) == Some("output_text"));
                events::fill(parts, "text", &text);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, json: &str) -> Chunk {
        Chunk::named_event(Shape::OpenaiResponses, name, json)
    }

    fn delta(seq: u32, text: &str) -> Chunk {
        event(
            "response.output_text.delta",
            &format!(
                r#"{{"content_index":0,"delta":{},"item_id":"msg_1","logprobs":[],"output_index":0,"sequence_number":{seq},"type":"response.output_text.delta"}}"#,
                serde_json::to_string(text).unwrap()
            ),
        )
    }

    /// What the hooks do to every chunk they see: read its text.
    fn hooks_read(chunks: &[Chunk]) {
        for c in chunks {
            c.text();
        }
    }

    fn data(c: &Chunk) -> Value {
        let raw = c.raw();
        let s = std::str::from_utf8(&raw).unwrap();
        let (head, rest) = s.split_once('\n').unwrap();
        assert!(head.starts_with("event: "), "the event line stays: {s}");
        serde_json::from_str(rest.trim().strip_prefix("data: ").unwrap()).unwrap()
    }

    fn the_end() -> Vec<Chunk> {
        vec![
            event(
                "response.output_text.done",
                r#"{"content_index":0,"item_id":"msg_1","logprobs":[],"output_index":0,"sequence_number":6,"text":"my secret plan","type":"response.output_text.done"}"#,
            ),
            event(
                "response.content_part.done",
                r#"{"content_index":0,"item_id":"msg_1","output_index":0,"part":{"annotations":[],"logprobs":[],"text":"my secret plan","type":"output_text"},"sequence_number":7,"type":"response.content_part.done"}"#,
            ),
            event(
                "response.output_item.done",
                r#"{"item":{"content":[{"annotations":[],"logprobs":[],"text":"my secret plan","type":"output_text"}],"id":"msg_1","role":"assistant","status":"completed","type":"message"},"output_index":0,"sequence_number":8,"type":"response.output_item.done"}"#,
            ),
            event(
                "response.completed",
                r#"{"response":{"id":"resp_1","output":[{"content":[{"annotations":[],"logprobs":[],"text":"my secret plan","type":"output_text"}],"id":"msg_1","role":"assistant","status":"completed","type":"message"}],"text":{"format":{"type":"text"}},"usage":{"input_tokens":3,"output_tokens":3}},"sequence_number":9,"type":"response.completed"}"#,
            ),
        ]
    }

    fn added() -> Chunk {
        event(
            "response.output_item.added",
            r#"{"item":{"content":[],"id":"msg_1","role":"assistant","status":"in_progress","type":"message"},"output_index":0,"sequence_number":2,"type":"response.output_item.added"}"#,
        )
    }

    #[test]
    fn only_streamed_responses_answers_need_one() {
        assert!(Transcript::of(Shape::OpenaiResponses, Kind::Event).is_some());
        assert!(Transcript::of(Shape::OpenaiResponses, Kind::Whole).is_none());
        assert!(Transcript::of(Shape::AnthropicMessages, Kind::Event).is_none());
        assert!(Transcript::of(Shape::OpenaiChat, Kind::Event).is_none());
    }

    #[test]
    fn copies_of_rewritten_text_say_what_was_sent() {
        let mut t = Transcript::of(Shape::OpenaiResponses, Kind::Event).unwrap();
        t.sent(&mut added());
        let mut d = [delta(3, "my "), delta(4, "secret "), delta(5, "plan")];
        hooks_read(&d);
        assert!(d[1].set_text("[REDACTED] ".into()));
        for c in &mut d {
            t.sent(c);
        }
        let mut end = the_end();
        for c in &mut end {
            t.sent(c);
        }
        let sent = "my [REDACTED] plan";
        assert_eq!(data(&end[0])["text"], sent);
        assert_eq!(data(&end[1])["part"]["text"], sent);
        assert_eq!(data(&end[2])["item"]["content"][0]["text"], sent);
        let done = data(&end[3]);
        assert_eq!(done["response"]["output"][0]["content"][0]["text"], sent);
        assert_eq!(
            done["response"]["text"]["format"]["type"], "text",
            "not a text copy"
        );
        assert_eq!(done["response"]["usage"]["output_tokens"], 3);
        for c in &end {
            assert!(!c.raw().windows(6).any(|w| w == b"secret"));
        }
    }

    #[test]
    fn text_released_before_the_done_event_is_part_of_the_copies() {
        let mut t = Transcript::of(Shape::OpenaiResponses, Kind::Event).unwrap();
        t.sent(&mut added());
        let mut d = [delta(3, "my "), delta(4, "secret "), delta(5, "plan")];
        // A hook holds "secret plan" back, then releases it redacted at the
        // done event, which has no place for text: it goes in a delta before.
        hooks_read(&d);
        d[1].set_text(String::new());
        d[2].set_text(String::new());
        for c in &mut d {
            t.sent(c);
        }
        let mut end = the_end();
        assert!(end[0].done());
        assert!(end[0].set_text("[REDACTED]".into()));
        let inserted = std::str::from_utf8(end[0].inserted().unwrap())
            .unwrap()
            .to_owned();
        assert!(inserted.starts_with("event: response.output_text.delta\ndata: {\"content_index\":0,\"delta\":\"[REDACTED]\",\"item_id\":\"msg_1\""), "{inserted}");
        for c in &mut end {
            t.sent(c);
        }
        assert_eq!(data(&end[0])["text"], "my [REDACTED]");
        assert_eq!(
            data(&end[3])["response"]["output"][0]["content"][0]["text"],
            "my [REDACTED]"
        );
    }

    /// The sequence numbers of what goes out for `chunks`, inserted events included.
    fn numbers(chunks: &[Chunk]) -> Vec<u64> {
        let mut out = Vec::new();
        for c in chunks {
            let mut raw = c.inserted().map(<[u8]>::to_vec).unwrap_or_default();
            raw.extend_from_slice(&c.raw());
            for e in std::str::from_utf8(&raw).unwrap().split_terminator("\n\n") {
                let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                let v: Value = serde_json::from_str(data).unwrap();
                out.push(v["sequence_number"].as_u64().unwrap());
            }
        }
        out
    }

    #[test]
    fn an_inserted_event_takes_the_number_of_the_next_and_the_rest_move_up() {
        let mut t = Transcript::of(Shape::OpenaiResponses, Kind::Event).unwrap();
        let mut chunks = vec![
            added(),
            delta(3, "my "),
            delta(4, "secret "),
            delta(5, "plan"),
        ];
        chunks.extend(the_end());
        hooks_read(&chunks);
        chunks[2].set_text(String::new());
        chunks[3].set_text(String::new());
        // Released at the text's end, by two hooks: one event carries both.
        assert!(chunks[4].set_text("[REDACTED]".into()));
        assert!(chunks[4].set_text(" ok".into()));
        for c in &mut chunks {
            t.sent(c);
        }
        assert_eq!(numbers(&chunks), (2..=10).collect::<Vec<_>>());
        let inserted = std::str::from_utf8(chunks[4].inserted().unwrap()).unwrap();
        assert_eq!(inserted.matches("event: ").count(), 1, "{inserted}");
        assert!(
            inserted.contains("\"delta\":\"[REDACTED] ok\""),
            "{inserted}"
        );
        assert_eq!(data(&chunks[4])["text"], "my [REDACTED] ok");
    }

    #[test]
    fn events_after_an_insertion_are_renumbered_even_when_nothing_else_changes() {
        // Text put on an event early in the answer: the deltas after it,
        // which nothing else rewrites, move up too.
        let mut t = Transcript::of(Shape::OpenaiResponses, Kind::Event).unwrap();
        let mut chunks = vec![
            added(),
            event(
                "response.content_part.added",
                r#"{"content_index":0,"item_id":"msg_1","output_index":0,"part":{"annotations":[],"logprobs":[],"text":"","type":"output_text"},"sequence_number":3,"type":"response.content_part.added"}"#,
            ),
            delta(4, "my "),
            delta(5, "plan"),
        ];
        hooks_read(&chunks);
        assert!(chunks[1].set_text("Note: ".into()));
        for c in &mut chunks {
            t.sent(c);
        }
        assert_eq!(numbers(&chunks), [2, 3, 4, 5, 6]);
        assert_eq!(data(&chunks[3])["delta"], "plan", "only the number changed");
        assert_eq!(t.items, vec![("msg_1".into(), "Note: my plan".into())]);
    }

    fn thought(seq: u32, thinking: &str) -> Chunk {
        event(
            "response.reasoning_summary_text.delta",
            &format!(
                r#"{{"delta":{},"item_id":"rs_1","output_index":0,"sequence_number":{seq},"summary_index":0,"type":"response.reasoning_summary_text.delta"}}"#,
                serde_json::to_string(thinking).unwrap()
            ),
        )
    }

    /// A thinking answer as `ResponsesStreamConverter` sends it: the
    /// reasoning item (2..=6), then the message (7..=13).
    fn thinking_answer() -> Vec<Chunk> {
        let reasoning = r#"{"encrypted_content":"my secret plan","id":"rs_1","summary":[{"text":"my secret plan","type":"summary_text"}],"type":"reasoning"}"#;
        let message = r#"{"content":[{"annotations":[],"logprobs":[],"text":"ok","type":"output_text"}],"id":"msg_1","role":"assistant","status":"completed","type":"message"}"#;
        vec![
            event(
                "response.output_item.added",
                r#"{"item":{"id":"rs_1","summary":[],"type":"reasoning"},"output_index":0,"sequence_number":2,"type":"response.output_item.added"}"#,
            ),
            thought(3, "my "),
            thought(4, "secret "),
            thought(5, "plan"),
            event(
                "response.reasoning_summary_text.done",
                r#"{"item_id":"rs_1","output_index":0,"sequence_number":6,"summary_index":0,"text":"my secret plan","type":"response.reasoning_summary_text.done"}"#,
            ),
            event(
                "response.output_item.done",
                &format!(
                    r#"{{"item":{reasoning},"output_index":0,"sequence_number":7,"type":"response.output_item.done"}}"#
                ),
            ),
            event(
                "response.output_item.added",
                r#"{"item":{"content":[],"id":"msg_1","role":"assistant","status":"in_progress","type":"message"},"output_index":1,"sequence_number":8,"type":"response.output_item.added"}"#,
            ),
            event(
                "response.output_text.delta",
                r#"{"content_index":0,"delta":"ok","item_id":"msg_1","logprobs":[],"output_index":1,"sequence_number":9,"type":"response.output_text.delta"}"#,
            ),
            event(
                "response.output_text.done",
                r#"{"content_index":0,"item_id":"msg_1","logprobs":[],"output_index":1,"sequence_number":10,"text":"ok","type":"response.output_text.done"}"#,
            ),
            event(
                "response.output_item.done",
                &format!(
                    r#"{{"item":{message},"output_index":1,"sequence_number":11,"type":"response.output_item.done"}}"#
                ),
            ),
            event(
                "response.completed",
                &format!(
                    r#"{{"response":{{"id":"resp_1","output":[{reasoning},{message}],"usage":{{"input_tokens":3,"output_tokens":3}}}},"sequence_number":12,"type":"response.completed"}}"#
                ),
            ),
        ]
    }

    fn hooks_read_thinking(chunks: &[Chunk]) {
        for c in chunks {
            c.thinking();
        }
    }

    #[test]
    fn copies_of_rewritten_thinking_say_what_was_sent() {
        let mut t = Transcript::of(Shape::OpenaiResponses, Kind::Event).unwrap();
        let mut chunks = thinking_answer();
        hooks_read_thinking(&chunks);
        assert!(chunks[2].set_thinking("[REDACTED] ".into()));
        for c in &mut chunks {
            t.sent(c);
        }
        let sent = "my [REDACTED] plan";
        assert_eq!(data(&chunks[4])["text"], sent);
        let item = &data(&chunks[5])["item"];
        assert_eq!(
            (
                item["summary"][0]["text"].as_str(),
                item["encrypted_content"].as_str()
            ),
            (Some(sent), Some(sent))
        );
        let done = data(&chunks[10]);
        let output = &done["response"]["output"];
        assert_eq!(output[0]["summary"][0]["text"], sent);
        assert_eq!(output[0]["encrypted_content"], sent);
        assert_eq!(
            output[1]["content"][0]["text"], "ok",
            "the text was not changed"
        );
        assert_eq!(done["response"]["usage"]["output_tokens"], 3);
        for c in &chunks {
            assert!(!c.raw().windows(6).any(|w| w == b"secret"));
        }
        // The text's copies were left as they came.
        assert_eq!(chunks[8].raw(), thinking_answer()[8].raw());
        assert_eq!(chunks[9].raw(), thinking_answer()[9].raw());
        assert_eq!(t.thoughts, vec![("rs_1".into(), sent.into())]);
    }

    #[test]
    fn changed_text_leaves_the_thinking_copies_alone() {
        let mut t = Transcript::of(Shape::OpenaiResponses, Kind::Event).unwrap();
        let mut chunks = thinking_answer();
        hooks_read_thinking(&chunks);
        assert!(chunks[7].set_text("OK".into()));
        for c in &mut chunks {
            t.sent(c);
        }
        let output = &data(&chunks[10])["response"]["output"];
        assert_eq!(output[0]["summary"][0]["text"], "my secret plan");
        assert_eq!(output[1]["content"][0]["text"], "OK");
        assert_eq!(chunks[5].raw(), thinking_answer()[5].raw());
    }

    #[test]
    fn thinking_released_at_its_end_is_numbered_and_part_of_the_copies() {
        let mut t = Transcript::of(Shape::OpenaiResponses, Kind::Event).unwrap();
        let mut chunks = thinking_answer();
        hooks_read_thinking(&chunks);
        // Held back, then released redacted at the summary's end, and a
        // note put before the answer's end in the text, on the same event.
        chunks[2].set_thinking(String::new());
        chunks[3].set_thinking(String::new());
        assert!(chunks[4].thinking_done());
        assert!(chunks[4].set_text("note".into()));
        assert!(chunks[4].set_thinking("[REDACTED]".into()));
        for c in &mut chunks {
            t.sent(c);
        }
        assert_eq!(numbers(&chunks), (2..=14).collect::<Vec<_>>());
        let inserted = std::str::from_utf8(chunks[4].inserted().unwrap()).unwrap();
        let events: Vec<&str> = inserted.split_terminator("\n\n").collect();
        assert!(events[0].starts_with("event: response.reasoning_summary_text.delta\ndata: {\"delta\":\"[REDACTED]\",\"item_id\":\"rs_1\""), "{inserted}");
        assert!(
            events[1].starts_with("event: response.output_text.delta\n"),
            "{inserted}"
        );
        let sent = "my [REDACTED]";
        assert_eq!(data(&chunks[4])["text"], sent);
        assert_eq!(data(&chunks[5])["item"]["encrypted_content"], sent);
        assert_eq!(
            data(&chunks[10])["response"]["output"][0]["summary"][0]["text"],
            sent
        );
    }

    #[test]
    fn thinking_released_on_an_event_of_another_item_names_the_reasoning_item() {
        // A hook that missed `thinking_done` releases at the message's
        // first delta: the event inserted names the answer's reasoning item.
        let mut t = Transcript::of(Shape::OpenaiResponses, Kind::Event).unwrap();
        let mut chunks = thinking_answer();
        hooks_read_thinking(&chunks);
        chunks[3].set_thinking(String::new());
        assert!(chunks[7].set_thinking("[P]".into()));
        for c in &mut chunks {
            t.sent(c);
        }
        let inserted = std::str::from_utf8(chunks[7].inserted().unwrap()).unwrap();
        assert!(
            inserted.contains("\"item_id\":\"rs_1\",\"output_index\":0,\"sequence_number\":9,"),
            "{inserted}"
        );
        assert_eq!(numbers(&chunks), (2..=13).collect::<Vec<_>>());
        assert_eq!(t.thoughts, vec![("rs_1".into(), "my secret [P]".into())]);
        assert_eq!(
            data(&chunks[10])["response"]["output"][0]["encrypted_content"],
            "my secret [P]"
        );
    }

    #[test]
    fn answers_whose_thinking_is_untouched_keep_their_bytes() {
        let mut t = Transcript::of(Shape::OpenaiResponses, Kind::Event).unwrap();
        let mut chunks = thinking_answer();
        hooks_read_thinking(&chunks);
        for c in &mut chunks {
            let before = c.raw();
            t.sent(c);
            assert_eq!(c.raw(), before);
        }
        assert_eq!(t.thoughts, vec![("rs_1".into(), "my secret plan".into())]);
    }

    #[test]
    fn untouched_answers_keep_their_bytes() {
        let mut t = Transcript::of(Shape::OpenaiResponses, Kind::Event).unwrap();
        t.sent(&mut added());
        let mut d = [delta(3, "my "), delta(4, "plan")];
        hooks_read(&d);
        for c in &mut d {
            t.sent(c);
        }
        for c in &mut the_end() {
            let before = c.raw();
            t.sent(c);
            assert_eq!(c.raw(), before);
        }
        assert_eq!(t.items, vec![("msg_1".into(), "my plan".into())]);
    }

    #[test]
    fn chunks_no_hook_read_are_not_parsed() {
        let mut t = Transcript::of(Shape::OpenaiResponses, Kind::Event).unwrap();
        t.sent(&mut added());
        let mut d = delta(3, "my ");
        t.sent(&mut d);
        assert!(
            d.text_read().is_none(),
            "hooks that stopped looking cost nothing"
        );
        let mut end = the_end();
        let before = end[0].raw();
        t.sent(&mut end[0]);
        assert_eq!(end[0].raw(), before);
    }
}
