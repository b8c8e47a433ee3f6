//! The bytes of chunks, below the JSON: the in-place splice of a string
//! field, SSE events and NDJSON lines framed for inserted chunks, and the
//! tool-call arguments as the one text
//! [`Channel::ToolArguments`](super::codec::Channel::ToolArguments) carries.

use serde_json::Value;

use super::codec::{Codec, Kind};

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

/// The [`Channel::ToolArguments`](super::codec::Channel::ToolArguments) text of a chunk whose JSON is `json`:
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

/// Sets `key` of the object `o` to the string `value` (where a codec
/// places a channel); `false` when there is no object there.
pub fn put_string(o: Option<&mut serde_json::Map<String, Value>>, key: &str, value: &str) -> bool {
    o.map(|o| o.insert(key.into(), Value::String(value.into())))
        .is_some()
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
