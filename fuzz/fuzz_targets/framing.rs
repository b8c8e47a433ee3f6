//! The NDJSON/SSE framer (proxy/src/framing.rs): however a stream is split
//! into reads, the same frames come out, with the same error at the same
//! place, and frames never exceed the limit. Input: one byte picks the
//! format and the limit, the rest is the stream; read sizes come from the
//! stream's own bytes.
#![no_main]
#![allow(dead_code)]

#[path = "../../proxy/src/framing.rs"]
mod framing;

use bytes::Bytes;
use framing::{Format, Framer};
use libfuzzer_sys::fuzz_target;

/// Frames of `stream` fed in `reads`, then the rest at the end; `Err` ends it.
fn frames(format: Format, limit: usize, stream: &[u8], reads: &[usize]) -> Vec<Result<Bytes, ()>> {
    let mut framer = Framer::new(format, limit);
    let mut out = Vec::new();
    let mut at: usize = 0;
    for &n in reads.iter().chain(std::iter::once(&usize::MAX)) {
        let end = at.saturating_add(n).min(stream.len());
        // Alternate the two ways of feeding, which take different paths.
        if out.len() % 2 == 0 {
            framer.push(&stream[at..end]);
        } else {
            framer.push_bytes(Bytes::copy_from_slice(&stream[at..end]));
        }
        at = end;
        loop {
            match framer.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= limit, "frame over the limit");
                    out.push(Ok(frame));
                }
                Ok(None) => break,
                Err(_) => {
                    out.push(Err(()));
                    return out;
                }
            }
        }
        if at == stream.len() {
            break;
        }
    }
    match framer.finish() {
        Ok(Some(last)) => out.push(Ok(last)),
        Ok(None) => {}
        Err(_) => out.push(Err(())),
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let format = if pick & 1 == 0 {
        Format::Ndjson
    } else {
        Format::Sse
    };
    let limit = 1 + (pick >> 1) as usize * 4;
    let whole = frames(format, limit, stream, &[usize::MAX]);
    let reads: Vec<usize> = stream.iter().map(|b| 1 + (*b as usize % 7)).collect();
    let split = frames(format, limit, stream, &reads);
    assert_eq!(whole, split, "frames depend on how the stream was split");
    let one_by_one = frames(format, limit, stream, &vec![1; stream.len()]);
    assert_eq!(
        whole, one_by_one,
        "frames depend on how the stream was split"
    );
    // Without an error, the frames are the stream, cut.
    if whole.iter().all(Result::is_ok) {
        let joined: Vec<u8> = whole
            .iter()
            .flat_map(|f| f.as_ref().unwrap().to_vec())
            .collect();
        assert!(
            stream.starts_with(&joined),
            "a frame is not the stream's bytes"
        );
    }
});
