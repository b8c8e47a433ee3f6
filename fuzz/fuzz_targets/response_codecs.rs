//! The response codecs (proxy/src/response/) on any chunk Ollama — or
//! something posing as it — could send: reading never panics; a hook's
//! rewrite of a channel the chunk carries always lands in the chunk; and a
//! rewrite in place reads back as what the hook put, with the chunk's other
//! channels as they were. Input:
//! one byte picks the codec and the chunk's kind, one the channel, the rest
//! is the chunk.
#![no_main]
#![allow(dead_code)]

#[path = "../../proxy/src/framing.rs"]
mod framing;
#[path = "codecs/mod.rs"]
mod response;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use response::chunk::Chunk;
use response::codec::{Channel, Codec, Kind};

static CODECS: [&dyn Codec; 7] = [
    &response::ollama::Ollama { chat: false },
    &response::ollama::Ollama { chat: true },
    &response::openai::OpenAi { chat: true },
    &response::openai::OpenAi { chat: false },
    &response::responses::Responses,
    &response::messages::Messages,
    &response::gemini::Gemini,
];

/// Every channel of `chunk`, indexed by `Channel as usize`.
fn read_all(chunk: &Chunk) -> [Option<String>; 3] {
    [
        chunk.text().map(str::to_owned),
        chunk.thinking().map(str::to_owned),
        chunk.tool_arguments().map(str::to_owned),
    ]
}

fuzz_target!(|data: &[u8]| {
    let [pick, which, raw @ ..] = data else {
        return;
    };
    let codec = CODECS[*pick as usize % CODECS.len()];
    let kind = [Kind::Line, Kind::Event, Kind::Whole][(*pick as usize / CODECS.len()) % 3];
    let channel = Channel::ALL[*which as usize % Channel::COUNT];
    let raw = Bytes::copy_from_slice(raw);

    let mut chunk = Chunk::new(raw.clone(), kind, codec);
    let before = read_all(&chunk);
    let _ = (chunk.usage(), chunk.done(), chunk.thinking_done(), chunk.is_usage_only());
    let _ = codec.plan_request(true, &raw);

    // What a redacting hook does: the channel's value with something changed.
    let new = match &before[channel as usize] {
        Some(old) => format!("[{}]", old.replace('a', "b")),
        None => "[inserted]".to_owned(),
    };
    let had = before[channel as usize].is_some();
    let placed = chunk.set(channel, new.clone());
    let mut out = BytesMut::new();
    chunk.write_to(&mut out);
    // A channel the chunk carries has its place in it: a rewrite there is
    // never dropped, nor sent in another chunk (a redaction that did not
    // land would leak what it meant to hide).
    assert!(!had || (placed && chunk.inserted().is_none()), "rewrite of a carried {channel:?} not placed");
    if !placed || chunk.inserted().is_some() {
        return;
    }
    // Rewritten in place: reading the bytes sent gives the new value, and
    // the other channels as they came.
    let sent = Chunk::new(chunk.raw(), kind, codec);
    let after = read_all(&sent);
    assert_eq!(after[channel as usize].as_deref(), Some(new.as_str()), "rewrite lost");
    for c in Channel::ALL.into_iter().filter(|c| *c != channel) {
        assert_eq!(after[c as usize], before[c as usize], "{c:?} changed by a rewrite of {channel:?}");
    }
});
