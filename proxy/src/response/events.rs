//! Where a hook's text (or thinking) goes in the two APIs whose answers are
//! typed events, `/v1/responses` (OpenAI Responses) and `/v1/messages`
//! (Anthropic Messages), when it cannot simply replace the JSON string it
//! came from:
//! into a tree of the chunk, or into an event of the API's own made to carry
//! it. Ollama's Go code that writes these answers: openai/responses.go
//! (`ResponsesStreamConverter`, `ToResponse`) and anthropic/anthropic.go
//! (`StreamConverter`, `ToMessagesResponse`).

use serde_json::{Value, json};

use super::chunk::{Channel, Kind, Shape, frame_event};

/// Puts `value` in the tree `v` of a chunk of `shape` as its `channel`: the
/// delta of a text or thinking event (`has`: the chunk is one), or, in a
/// whole body, the first text part (message items, `text` blocks) or
/// thinking part (the summary of `reasoning` items with their
/// `encrypted_content`, `thinking` blocks), emptying the others so the
/// body's text (thinking) is `value`, and adding a part when there is none.
/// `false` when the chunk has no place for it.
pub fn place(
    v: &mut Value,
    channel: Channel,
    shape: Shape,
    kind: Kind,
    has: bool,
    value: &str,
) -> bool {
    let delta_field = match channel {
        Channel::Text => "text",
        Channel::Thinking => "thinking",
    };
    match (shape, kind, channel) {
        (Shape::OpenaiResponses, Kind::Event | Kind::Line, _) if has => {
            set(v.as_object_mut().map(|o| o.entry("delta")), value)
        }
        (Shape::AnthropicMessages, Kind::Event | Kind::Line, _) if has => set(
            v.pointer_mut("/delta")
                .and_then(Value::as_object_mut)
                .map(|o| o.entry(delta_field)),
            value,
        ),
        (Shape::OpenaiResponses, Kind::Whole, Channel::Text) => place_in_responses_body(v, value),
        (Shape::AnthropicMessages, Kind::Whole, Channel::Text) => place_in_messages_body(v, value),
        (Shape::OpenaiResponses, Kind::Whole, Channel::Thinking) => {
            think_in_responses_body(v, value)
        }
        (Shape::AnthropicMessages, Kind::Whole, Channel::Thinking) => {
            think_in_messages_body(v, value)
        }
        _ => false,
    }
}

/// `output[]` items of type `reasoning`: their `summary_text` parts, and
/// `encrypted_content`, where Ollama repeats the thinking in plain text
/// (`ToResponse`): an item keeps it only with the thinking it now has, or
/// the original would reach the client there.
fn think_in_responses_body(v: &mut Value, thinking: &str) -> bool {
    if !is_object_of(v, "object", "response") {
        return false;
    }
    let Some(output) = array_mut(v, "output") else {
        return false;
    };
    let is_part = |p: &Value| is_type(p, "summary_text");
    let has_part = output
        .iter()
        .filter(|i| is_type(i, "reasoning"))
        .any(|i| list(i.get("summary")).any(is_part));
    if !has_part {
        // A summary part in the first reasoning item, or a reasoning item
        // first in `output`, as `ToResponse` writes it.
        let part = json!({"type": "summary_text", "text": ""});
        match output.iter_mut().find(|i| is_type(i, "reasoning")) {
            Some(item) => match item.as_object_mut() {
                Some(o) => o
                    .entry("summary")
                    .and_modify(|s| {
                        if !s.is_array() {
                            *s = json!([]);
                        }
                    })
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .into_iter()
                    .for_each(|s| s.push(part.clone())),
                None => return false,
            },
            None => {
                output.insert(
                    0,
                    json!({
                        "id": "rs_kiln", "type": "reasoning",
                        "summary": [{"type": "summary_text", "text": thinking}],
                        "encrypted_content": thinking,
                    }),
                );
                return true;
            }
        }
    }
    // The first reasoning item with a summary part gets the thinking; the
    // others none.
    let mut placed = false;
    for item in output.iter_mut().filter(|i| is_type(i, "reasoning")) {
        let first = !placed && list(item.get("summary")).any(is_part);
        placed |= first;
        fill_reasoning_item(item, if first { thinking } else { "" });
    }
    placed
}

/// A Responses `reasoning` item says `thinking`: its first `summary_text`
/// part does, its other parts say nothing, and so does its
/// `encrypted_content`, where Ollama repeats the thinking in plain text.
pub(super) fn fill_reasoning_item(item: &mut Value, thinking: &str) {
    let parts = array_mut(item, "summary").into_iter().flatten();
    fill(
        parts.filter(|p| is_type(p, "summary_text")),
        "text",
        thinking,
    );
    if let Some(o) = item.as_object_mut() {
        if o.contains_key("encrypted_content") {
            o.insert("encrypted_content".into(), Value::String(thinking.into()));
        }
    }
}

fn list(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    v.and_then(Value::as_array).into_iter().flatten()
}

/// `content[]` blocks of type `thinking`; a new one goes first (the model
/// thinks before it answers).
fn think_in_messages_body(v: &mut Value, thinking: &str) -> bool {
    if !is_object_of(v, "type", "message") {
        return false;
    }
    let Some(content) = array_mut(v, "content") else {
        return false;
    };
    let thoughts = content.iter_mut().filter(|b| is_type(b, "thinking"));
    if !fill(thoughts, "thinking", thinking) {
        content.insert(0, json!({"type": "thinking", "thinking": thinking}));
    }
    true
}

fn set(slot: Option<serde_json::map::Entry<'_>>, text: &str) -> bool {
    match slot {
        Some(e) => {
            *e.or_insert(Value::Null) = Value::String(text.into());
            true
        }
        None => false,
    }
}

fn is_type(v: &Value, kind: &str) -> bool {
    v.get("type").and_then(Value::as_str) == Some(kind)
}

/// Sets `field` of the first of `parts` to `text`, of the others to "", so
/// that together they say `text`. `false` when there is none.
pub(super) fn fill<'a>(
    parts: impl Iterator<Item = &'a mut Value>,
    field: &str,
    text: &str,
) -> bool {
    let mut first = true;
    for part in parts {
        if let Some(o) = part.as_object_mut() {
            let t = if first { text } else { "" };
            o.insert(field.into(), Value::String(t.into()));
            first = false;
        }
    }
    !first
}

fn array_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Vec<Value>> {
    v.get_mut(key).and_then(Value::as_array_mut)
}

/// `output[]` items of type `message`, their `output_text` content parts.
fn place_in_responses_body(v: &mut Value, text: &str) -> bool {
    if !is_object_of(v, "object", "response") {
        return false;
    }
    let Some(output) = array_mut(v, "output") else {
        return false;
    };
    let parts = output
        .iter_mut()
        .filter(|i| is_type(i, "message"))
        .filter_map(|i| array_mut(i, "content"))
        .flat_map(|c| c.iter_mut().filter(|p| is_type(p, "output_text")));
    if fill(parts, "text", text) {
        return true;
    }
    let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
    if let Some(content) = output
        .iter_mut()
        .find(|i| is_type(i, "message"))
        .and_then(|i| array_mut(i, "content"))
    {
        content.push(part);
    } else {
        output.push(json!({
            "id": "msg_kiln", "type": "message", "status": "completed", "role": "assistant",
            "content": [part],
        }));
    }
    true
}

/// `content[]` blocks of type `text`.
fn place_in_messages_body(v: &mut Value, text: &str) -> bool {
    if !is_object_of(v, "type", "message") {
        return false;
    }
    let Some(content) = array_mut(v, "content") else {
        return false;
    };
    if fill(
        content.iter_mut().filter(|b| is_type(b, "text")),
        "text",
        text,
    ) {
        return true;
    }
    content.push(json!({"type": "text", "text": text}));
    true
}

fn is_object_of(v: &Value, key: &str, value: &str) -> bool {
    v.get(key).and_then(Value::as_str) == Some(value)
}

/// A text event of the API carrying `text`, to send before the chunk whose
/// tree is `v` (a `response.output_text.done` or `content_block_stop` when a
/// hook releases held text at the end): it names the same item or block as
/// that chunk. Fields in the order Ollama's Go marshals them (a map, so
/// sorted, for Responses; the struct's order for Messages). A Responses
/// event takes `seq` as its `sequence_number`, or else that chunk's: the
/// transcript renumbers the chunk and the ones after it.
pub fn synthetic(
    v: Option<&Value>,
    shape: Shape,
    kind: Kind,
    channel: Channel,
    text: &str,
    seq: Option<u64>,
    reasoning: Option<(&str, u64)>,
) -> Vec<u8> {
    if kind != Kind::Event {
        return Vec::new();
    }
    let n = |p: &str| v.and_then(|v| v.pointer(p)).and_then(Value::as_u64);
    // Serializing a str cannot fail.
    let text = serde_json::to_string(text).unwrap_or_default();
    let seq = seq.or_else(|| n("/sequence_number")).unwrap_or(0);
    let (event, json) = match (shape, channel) {
        (Shape::OpenaiResponses, Channel::Thinking) => {
            // `processThinking`'s delta, keys sorted as Go marshals a map.
            let (item_id, output_index) = responses_reasoning_item(v, reasoning);
            let item_id = serde_json::to_string(&item_id).unwrap_or_default();
            let json = format!(
                "{{\"delta\":{text},\"item_id\":{item_id},\"output_index\":{output_index},\
                 \"sequence_number\":{seq},\"summary_index\":{},\"type\":\"response.reasoning_summary_text.delta\"}}",
                n("/summary_index").unwrap_or(0),
            );
            ("response.reasoning_summary_text.delta", json)
        }
        (Shape::AnthropicMessages, Channel::Thinking) => {
            let json = format!(
                "{{\"type\":\"content_block_delta\",\"index\":{},\"delta\":{{\"type\":\"thinking_delta\",\"thinking\":{text}}}}}",
                n("/index").unwrap_or(0)
            );
            ("content_block_delta", json)
        }
        (Shape::OpenaiResponses, Channel::Text) => {
            let (item_id, output_index) = responses_item(v);
            let item_id = serde_json::to_string(&item_id).unwrap_or_default();
            let json = format!(
                "{{\"content_index\":{},\"delta\":{text},\"item_id\":{item_id},\"logprobs\":[],\
                 \"output_index\":{output_index},\"sequence_number\":{seq},\"type\":\"response.output_text.delta\"}}",
                n("/content_index").unwrap_or(0),
            );
            ("response.output_text.delta", json)
        }
        (Shape::AnthropicMessages, Channel::Text) => {
            let json = format!(
                "{{\"type\":\"content_block_delta\",\"index\":{},\"delta\":{{\"type\":\"text_delta\",\"text\":{text}}}}}",
                n("/index").unwrap_or(0)
            );
            ("content_block_delta", json)
        }
        _ => return Vec::new(),
    };
    let mut out = Vec::with_capacity(json.len() + 40);
    frame_event(
        &mut out,
        format!("event: {event}\n").as_bytes(),
        json.as_bytes(),
    );
    out
}

/// The message item a Responses event is about: its own `item_id` and
/// `output_index`, the item of an `output_item` event, or the last message
/// of a response object's `output`.
pub fn responses_item(v: Option<&Value>) -> (String, u64) {
    item_of(v, "message", "msg_kiln", |_| true)
}

/// The reasoning item a Responses event is about, as [`responses_item`]:
/// the event's own item only when it is a reasoning event or item (a text
/// event names its message), else `known` (the answer's last reasoning
/// item, when the caller knows it).
pub fn responses_reasoning_item(v: Option<&Value>, known: Option<(&str, u64)>) -> (String, u64) {
    if let (false, Some((id, index))) = (v.is_some_and(names_reasoning), known) {
        return (id.to_owned(), index);
    }
    item_of(v, "reasoning", "rs_kiln", names_reasoning)
}

/// A reasoning event, or an `output_item` event of a reasoning item.
fn names_reasoning(v: &Value) -> bool {
    let event = v.get("type").and_then(Value::as_str).unwrap_or("");
    event.starts_with("response.reasoning")
        || is_type(v.get("item").unwrap_or(&Value::Null), "reasoning")
}

fn item_of(
    v: Option<&Value>,
    kind: &str,
    default: &str,
    own: impl Fn(&Value) -> bool,
) -> (String, u64) {
    let Some(v) = v else {
        return (default.into(), 0);
    };
    let index = v.get("output_index").and_then(Value::as_u64);
    let id = v
        .get("item_id")
        .or_else(|| v.pointer("/item/id"))
        .and_then(Value::as_str)
        .filter(|_| own(v));
    if let Some(id) = id {
        return (id.into(), index.unwrap_or(0));
    }
    let output = v
        .pointer("/response/output")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    match output.iter().rposition(|i| is_type(i, kind)) {
        Some(at) => {
            let id = output[at]
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or(default);
            (id.into(), at as u64)
        }
        None => (default.into(), output.len() as u64),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::Value;

    use super::super::chunk::{Chunk, Kind, Shape, Usage};

    fn event(shape: Shape, name: &str, json: &str) -> Chunk {
        Chunk::named_event(shape, name, json)
    }

    fn body(shape: Shape, json: &str) -> Chunk {
        Chunk::new(Bytes::from(format!("{json}\n")), Kind::Whole, shape)
    }

    fn text(c: &Chunk) -> String {
        String::from_utf8(c.raw().to_vec()).unwrap()
    }

    fn json(c: &Chunk) -> Value {
        let raw = text(c);
        let data = raw.lines().find_map(|l| l.strip_prefix("data: "));
        serde_json::from_str(data.unwrap_or(&raw)).unwrap()
    }

    #[test]
    fn deltas_are_rewritten_in_place_with_their_event_line() {
        let mut r = event(
            Shape::OpenaiResponses,
            "response.output_text.delta",
            r#"{"content_index":0,"delta":"secret","item_id":"msg_1","logprobs":[],"output_index":0,"sequence_number":4,"type":"response.output_text.delta"}"#,
        );
        assert_eq!(r.text(), Some("secret"));
        assert!(r.set_text("[REDACTED]".into()));
        assert_eq!(
            text(&r),
            "event: response.output_text.delta\ndata: {\"content_index\":0,\"delta\":\"[REDACTED]\",\"item_id\":\"msg_1\",\"logprobs\":[],\"output_index\":0,\"sequence_number\":4,\"type\":\"response.output_text.delta\"}\n\n"
        );
        assert!(r.text_edited());

        let mut m = event(
            Shape::AnthropicMessages,
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"secret"}}"#,
        );
        assert!(m.set_text("".into()));
        assert_eq!(
            text(&m),
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"\"}}\n\n"
        );
        // Twice (two plugins): the second goes through the tree, the event line stays.
        assert!(m.set_text("x".into()));
        assert!(m.set_text("y".into()));
        assert!(text(&m).starts_with("event: content_block_delta\ndata: {"));
        assert_eq!(json(&m)["delta"]["text"], "y");
    }

    #[test]
    fn text_released_at_a_block_end_goes_in_a_delta_of_that_block() {
        let mut stop = event(
            Shape::AnthropicMessages,
            "content_block_stop",
            r#"{"type":"content_block_stop","index":1}"#,
        );
        assert!(
            !stop.done(),
            "which kind of block it closes, only the answer's starts tell (see `blocks`)"
        );
        assert!(stop.set_text("held".into()));
        assert_eq!(
            std::str::from_utf8(stop.inserted().unwrap()).unwrap(),
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"held\"}}\n\n"
        );
        assert_eq!(stop.inserted_text(), Some("held"));
        assert_eq!(
            text(&stop),
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n"
        );
        assert!(!stop.text_edited(), "its own bytes are unchanged");

        let mut done = event(
            Shape::OpenaiResponses,
            "response.output_text.done",
            r#"{"content_index":0,"item_id":"msg_7","logprobs":[],"output_index":2,"sequence_number":9,"text":"x","type":"response.output_text.done"}"#,
        );
        assert!(done.set_text("held".into()));
        let inserted = std::str::from_utf8(done.inserted().unwrap()).unwrap();
        assert_eq!(
            inserted,
            "event: response.output_text.delta\ndata: {\"content_index\":0,\"delta\":\"held\",\"item_id\":\"msg_7\",\"logprobs\":[],\"output_index\":2,\"sequence_number\":9,\"type\":\"response.output_text.delta\"}\n\n"
        );
    }

    #[test]
    fn whole_bodies_get_the_text_once() {
        // The reasoning summary's "text" comes first: the splice would hit
        // it, so the tree does it.
        let mut r = body(
            Shape::OpenaiResponses,
            r#"{"id":"resp_1","object":"response","output":[{"id":"rs_1","type":"reasoning","summary":[{"type":"summary_text","text":"secret"}]},{"id":"msg_1","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"a secret","annotations":[],"logprobs":[]}]}],"usage":{"input_tokens":1,"output_tokens":2}}"#,
        );
        assert_eq!(r.text(), Some("a secret"));
        assert!(r.set_text("a [REDACTED]".into()));
        let v = json(&r);
        assert_eq!(v["output"][1]["content"][0]["text"], "a [REDACTED]");
        assert_eq!(
            v["output"][0]["summary"][0]["text"], "secret",
            "not the answer's text"
        );
        assert!(text(&r).ends_with("}\n"));

        // Text in one part: the splice keeps the bytes around it.
        let mut m = body(
            Shape::AnthropicMessages,
            r#"{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"a secret"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":9}}"#,
        );
        assert!(m.set_text("a [REDACTED]".into()));
        assert_eq!(
            text(&m),
            "{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[{\"type\":\"text\",\"text\":\"a [REDACTED]\"}],\"stop_reason\":\"end_turn\",\"usage\":{\"input_tokens\":5,\"output_tokens\":9}}\n"
        );

        // Several parts: the first gets the text, the others none.
        let mut two = body(
            Shape::AnthropicMessages,
            r#"{"type":"message","content":[{"type":"text","text":"a "},{"type":"tool_use","id":"t","name":"f","input":{}},{"type":"text","text":"secret"}]}"#,
        );
        assert_eq!(two.text(), Some("a secret"));
        two.set_text("a [REDACTED]".into());
        let v = json(&two);
        assert_eq!(
            (
                v["content"][0]["text"].as_str(),
                v["content"][2]["text"].as_str()
            ),
            (Some("a [REDACTED]"), Some(""))
        );
        assert_eq!(two.text(), Some("a [REDACTED]"));

        // No text block yet: one is added.
        let mut none = body(
            Shape::AnthropicMessages,
            r#"{"type":"message","content":[]}"#,
        );
        none.set_text("note".into());
        assert_eq!(json(&none)["content"][0]["text"], "note");
        // An error body has no place for text.
        let mut err = body(
            Shape::AnthropicMessages,
            r#"{"type":"error","error":{"type":"api_error","message":"x"}}"#,
        );
        err.set_text("note".into());
        assert_eq!(json(&err)["error"]["message"], "x");
    }

    #[test]
    fn thinking_deltas_are_rewritten_in_place() {
        let mut r = event(
            Shape::OpenaiResponses,
            "response.reasoning_summary_text.delta",
            r#"{"delta":"my secret","item_id":"rs_1","output_index":0,"sequence_number":3,"summary_index":0,"type":"response.reasoning_summary_text.delta"}"#,
        );
        assert_eq!((r.thinking(), r.text()), (Some("my secret"), None));
        assert!(!r.thinking_done());
        assert!(r.set_thinking("my [R]".into()));
        assert_eq!(
            text(&r),
            "event: response.reasoning_summary_text.delta\ndata: {\"delta\":\"my [R]\",\"item_id\":\"rs_1\",\"output_index\":0,\"sequence_number\":3,\"summary_index\":0,\"type\":\"response.reasoning_summary_text.delta\"}\n\n"
        );
        assert!(r.thinking_edited() && !r.text_edited());
        // Twice: the tree, the event line kept.
        assert!(r.set_thinking("a".into()));
        assert!(r.set_thinking("b".into()));
        assert!(text(&r).starts_with("event: response.reasoning_summary_text.delta\ndata: {"));
        assert_eq!(json(&r)["delta"], "b");

        let mut m = event(
            Shape::AnthropicMessages,
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"my secret"}}"#,
        );
        assert_eq!(m.thinking(), Some("my secret"));
        assert!(m.set_thinking("".into()));
        assert_eq!(
            text(&m),
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"\"}}\n\n"
        );
        assert!(m.set_thinking("x".into()));
        assert!(m.set_thinking("y".into()));
        assert_eq!(json(&m)["delta"]["thinking"], "y");
        assert_eq!(json(&m)["delta"]["type"], "thinking_delta");
    }

    #[test]
    fn thinking_released_at_its_end_goes_in_a_delta_of_its_item_or_block() {
        let mut done = event(
            Shape::OpenaiResponses,
            "response.reasoning_summary_text.done",
            r#"{"item_id":"rs_7","output_index":1,"sequence_number":9,"summary_index":0,"text":"x","type":"response.reasoning_summary_text.done"}"#,
        );
        assert!(done.thinking_done() && !done.done());
        assert_eq!(done.thinking(), None, "a copy, not new thinking");
        assert!(done.set_thinking("held".into()));
        assert_eq!(
            std::str::from_utf8(done.inserted().unwrap()).unwrap(),
            "event: response.reasoning_summary_text.delta\ndata: {\"delta\":\"held\",\"item_id\":\"rs_7\",\"output_index\":1,\"sequence_number\":9,\"summary_index\":0,\"type\":\"response.reasoning_summary_text.delta\"}\n\n"
        );
        assert_eq!(done.inserted_thinking(), Some("held"));
        assert!(!done.thinking_edited(), "its own bytes are unchanged");

        // A text event names its message: the thinking's item is not it.
        let mut text_delta = event(
            Shape::OpenaiResponses,
            "response.output_text.delta",
            r#"{"content_index":0,"delta":"Hi","item_id":"msg_1","logprobs":[],"output_index":1,"sequence_number":7,"type":"response.output_text.delta"}"#,
        );
        assert!(text_delta.set_thinking("late".into()));
        let inserted = std::str::from_utf8(text_delta.inserted().unwrap()).unwrap();
        assert!(inserted.contains("\"item_id\":\"rs_kiln\""), "{inserted}");
        assert_eq!(text_delta.text(), Some("Hi"));

        let mut stop = event(
            Shape::AnthropicMessages,
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        );
        assert!(stop.set_thinking("held".into()));
        assert_eq!(
            std::str::from_utf8(stop.inserted().unwrap()).unwrap(),
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"held\"}}\n\n"
        );
    }

    #[test]
    fn thinking_and_text_inserted_before_one_event_go_out_thinking_first() {
        let mut stop = event(
            Shape::AnthropicMessages,
            "content_block_stop",
            r#"{"type":"content_block_stop","index":2}"#,
        );
        assert!(stop.set_text("x".into()));
        assert!(stop.set_thinking("t".into()));
        assert!(stop.set_text("y".into()));
        let inserted = std::str::from_utf8(stop.inserted().unwrap()).unwrap();
        let events: Vec<&str> = inserted.split_terminator("\n\n").collect();
        assert_eq!(events.len(), 2, "one event per channel: {inserted}");
        assert!(
            events[0].contains("\"thinking_delta\",\"thinking\":\"t\""),
            "{inserted}"
        );
        assert!(
            events[1].contains("\"text_delta\",\"text\":\"xy\""),
            "{inserted}"
        );
    }

    #[test]
    fn whole_bodies_get_the_thinking_once() {
        // Ollama's ToResponse: the thinking in the summary and again in
        // encrypted_content; neither may keep the original.
        let mut r = body(
            Shape::OpenaiResponses,
            r#"{"id":"resp_1","object":"response","output":[{"id":"rs_resp_1","type":"reasoning","summary":[{"type":"summary_text","text":"my secret"}],"encrypted_content":"my secret"},{"id":"msg_1","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"a secret","annotations":[],"logprobs":[]}]}],"usage":{"input_tokens":1,"output_tokens":2}}"#,
        );
        assert_eq!(
            (r.thinking(), r.text()),
            (Some("my secret"), Some("a secret"))
        );
        assert!(r.thinking_done());
        assert!(r.set_text("a [R]".into()));
        assert!(r.set_thinking("my [R]".into()));
        let v = json(&r);
        assert_eq!(v["output"][0]["summary"][0]["text"], "my [R]");
        assert_eq!(v["output"][0]["encrypted_content"], "my [R]");
        assert_eq!(v["output"][1]["content"][0]["text"], "a [R]");
        assert!(!text(&r).contains("secret"));
        assert_eq!((r.thinking(), r.text()), (Some("my [R]"), Some("a [R]")));

        // Several parts: the first gets it, the others none.
        let mut two = body(
            Shape::OpenaiResponses,
            r#"{"object":"response","output":[{"id":"rs_1","type":"reasoning","summary":[{"type":"summary_text","text":"a "},{"type":"summary_text","text":"secret"}],"encrypted_content":"a secret"}]}"#,
        );
        assert_eq!(two.thinking(), Some("a secret"));
        two.set_thinking("a [R]".into());
        let v = json(&two);
        assert_eq!(
            (
                v["output"][0]["summary"][0]["text"].as_str(),
                v["output"][0]["summary"][1]["text"].as_str()
            ),
            (Some("a [R]"), Some(""))
        );
        assert_eq!(v["output"][0]["encrypted_content"], "a [R]");
        assert_eq!(two.thinking(), Some("a [R]"));

        // No reasoning item: one goes first.
        let mut none = body(
            Shape::OpenaiResponses,
            r#"{"object":"response","output":[{"id":"msg_1","type":"message","content":[{"type":"output_text","text":"Hi"}]}]}"#,
        );
        assert_eq!(none.thinking(), None);
        none.set_thinking("note".into());
        let v = json(&none);
        assert_eq!(v["output"][0]["type"], "reasoning");
        assert_eq!(v["output"][0]["summary"][0]["text"], "note");
        assert_eq!(v["output"][1]["content"][0]["text"], "Hi");
        assert_eq!(none.thinking(), Some("note"));

        // Messages: a single thinking block is spliced, bytes kept.
        let mut m = body(
            Shape::AnthropicMessages,
            r#"{"id":"msg_1","type":"message","role":"assistant","model":"qwen3","content":[{"type":"thinking","thinking":"my secret"},{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":9}}"#,
        );
        assert!(m.set_thinking("my [R]".into()));
        assert_eq!(
            text(&m),
            "{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"qwen3\",\"content\":[{\"type\":\"thinking\",\"thinking\":\"my [R]\"},{\"type\":\"text\",\"text\":\"Hi\"}],\"stop_reason\":\"end_turn\",\"usage\":{\"input_tokens\":5,\"output_tokens\":9}}\n"
        );
        // Several blocks: the first gets it; none: one goes first.
        let mut two = body(
            Shape::AnthropicMessages,
            r#"{"type":"message","content":[{"type":"thinking","thinking":"a "},{"type":"text","text":"Hi"},{"type":"thinking","thinking":"secret"}]}"#,
        );
        assert_eq!(two.thinking(), Some("a secret"));
        two.set_thinking("a [R]".into());
        let v = json(&two);
        assert_eq!(
            (
                v["content"][0]["thinking"].as_str(),
                v["content"][2]["thinking"].as_str()
            ),
            (Some("a [R]"), Some(""))
        );
        let mut none = body(
            Shape::AnthropicMessages,
            r#"{"type":"message","content":[{"type":"text","text":"Hi"}]}"#,
        );
        none.set_thinking("note".into());
        let v = json(&none);
        assert_eq!(
            (
                v["content"][0]["thinking"].as_str(),
                v["content"][1]["text"].as_str()
            ),
            (Some("note"), Some("Hi"))
        );
        // An error body has no place for it.
        let mut err = body(
            Shape::AnthropicMessages,
            r#"{"type":"error","error":{"type":"api_error","message":"x"}}"#,
        );
        err.set_thinking("note".into());
        assert_eq!(json(&err)["error"]["message"], "x");
        assert!(!text(&err).contains("note"));
    }

    #[test]
    fn anthropic_usage_adds_up_over_its_two_events() {
        let start = event(
            Shape::AnthropicMessages,
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[],"usage":{"input_tokens":5,"output_tokens":0}}}"#,
        );
        let delta = event(
            Shape::AnthropicMessages,
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}"#,
        );
        let mut usage = None;
        for c in [&start, &delta] {
            if let Some(u) = c.usage() {
                usage = Some(Usage::merged(usage, u));
            }
        }
        assert_eq!(
            usage,
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 9
            })
        );
        // Ollama repeats the final input count there: it wins over the estimate.
        let ollama = Usage {
            prompt_tokens: 7,
            completion_tokens: 9,
        };
        assert_eq!(Usage::merged(start.usage(), ollama), ollama);
    }
}
