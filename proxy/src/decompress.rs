//! Compressed request bodies. Ollama decodes `Content-Encoding: zstd` on its
//! OpenAI-compatible and Anthropic routes (`/v1/chat/completions`,
//! `/v1/completions`, `/v1/embeddings`, `/v1/responses`, `/v1/messages`:
//! server/routes.go, `cloudPassthroughMiddleware`, with an 8 MiB decoder
//! window), and some OpenAI clients send such bodies. Policy must see the
//! text the model will read, so the proxy decodes them (zstd, and gzip,
//! which clients also send) before plugins run and forwards the decoded body
//! without the header. The decoded size is capped by `limits.max_body_bytes`
//! like any body, so a small bomb cannot become a large allocation.

use std::io::Read;

use crate::filter::RouteKind;

/// Ollama's zstd decoder memory limit (`zstd.WithDecoderMaxMemory(8<<20)`).
const MAX_WINDOW: u64 = 8 << 20;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("Content-Encoding {0:?} is not accepted on this route; send the body uncompressed{1}")]
    Unsupported(String, &'static str),
    #[error("the decompressed request body is larger than limits.max_body_bytes = {0} bytes")]
    TooLarge(usize),
    #[error("the request body is not valid {0} data: {1}")]
    Corrupt(&'static str, String),
}

/// The routes whose bodies Ollama would decompress.
pub fn accepts_compressed(kind: RouteKind) -> bool {
    kind.is_openai() || kind == RouteKind::AnthropicMessages
}

/// The body as the model will read it: `body` decoded per `encoding` (the
/// request's `Content-Encoding`, if any), at most `max` bytes.
pub fn decode(
    kind: RouteKind,
    encoding: Option<&str>,
    body: &[u8],
    max: usize,
) -> Result<Option<Vec<u8>>, DecodeError> {
    let Some(encoding) = encoding.map(|e| e.trim().to_ascii_lowercase()) else {
        return Ok(None);
    };
    if encoding.is_empty() || encoding == "identity" {
        return Ok(None);
    }
    let hint = if accepts_compressed(kind) {
        " or as zstd or gzip"
    } else {
        ""
    };
    let unsupported = || DecodeError::Unsupported(encoding.clone(), hint);
    if !accepts_compressed(kind) {
        return Err(unsupported());
    }
    let mut out = Vec::new();
    match encoding.as_str() {
        "zstd" => zstd(body, max, &mut out)?,
        "gzip" | "x-gzip" => append_capped(
            flate2::read::MultiGzDecoder::new(body),
            max,
            "gzip",
            &mut out,
        )?,
        _ => return Err(unsupported()),
    }
    Ok(Some(out))
}

/// Every zstd frame of `body` in turn (a body may hold several, as
/// Ollama's decoder accepts).
fn zstd(mut body: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let corrupt = |e: String| DecodeError::Corrupt("zstd", e);
    if body.is_empty() {
        return Err(corrupt("the body is empty".into()));
    }
    while !body.is_empty() {
        let frame =
            ruzstd::decoding::StreamingDecoder::new_with_max_window_size(&mut body, MAX_WINDOW)
                .map_err(|e| corrupt(e.to_string()))?;
        append_capped(frame, max, "zstd", out)?;
    }
    Ok(())
}

/// Appends what `reader` yields to `out`, failing past `max` bytes in all.
fn append_capped(
    reader: impl Read,
    max: usize,
    name: &'static str,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    let room = max.saturating_sub(out.len()) as u64;
    reader
        .take(room + 1)
        .read_to_end(out)
        .map_err(|e| DecodeError::Corrupt(name, e.to_string()))?;
    if out.len() > max {
        return Err(DecodeError::TooLarge(max));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zstd_of(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    const CHAT: RouteKind = RouteKind::OpenaiChat;

    #[test]
    fn zstd_and_gzip_bodies_are_decoded_on_openai_and_anthropic_routes() {
        let body = br#"{"model":"gemma3:4b","messages":[]}"#;
        for kind in [
            CHAT,
            RouteKind::OpenaiResponses,
            RouteKind::AnthropicMessages,
        ] {
            assert_eq!(
                decode(kind, Some("zstd"), &zstd_of(body), 1000)
                    .unwrap()
                    .unwrap(),
                body
            );
            assert_eq!(
                decode(kind, Some("gzip"), &gzip(body), 1000)
                    .unwrap()
                    .unwrap(),
                body
            );
        }
        let two = [zstd_of(b"{\"a\":"), zstd_of(b"1}")].concat();
        assert_eq!(
            decode(CHAT, Some("zstd"), &two, 100).unwrap().unwrap(),
            b"{\"a\":1}"
        );
        assert_eq!(decode(CHAT, None, body, 10).unwrap(), None);
        assert_eq!(decode(CHAT, Some("identity"), body, 10).unwrap(), None);
    }

    #[test]
    fn bombs_stop_at_the_cap() {
        let zeros = vec![0u8; 4 << 20];
        for (enc, packed) in [("zstd", zstd_of(&zeros)), ("gzip", gzip(&zeros))] {
            assert!(packed.len() < 64 << 10, "{enc}: {}", packed.len());
            assert_eq!(
                decode(CHAT, Some(enc), &packed, 1 << 20),
                Err(DecodeError::TooLarge(1 << 20)),
                "{enc}"
            );
        }
        let chained = [zstd_of(&zeros[..800]), zstd_of(&zeros[..800])].concat();
        assert_eq!(
            decode(CHAT, Some("zstd"), &chained, 1000),
            Err(DecodeError::TooLarge(1000))
        );
    }

    #[test]
    fn other_routes_and_encodings_are_refused() {
        let err = decode(RouteKind::OllamaChat, Some("zstd"), b"x", 10).unwrap_err();
        assert!(matches!(err, DecodeError::Unsupported(..)), "{err}");
        let err = decode(CHAT, Some("br"), b"x", 10).unwrap_err();
        assert!(err.to_string().contains("zstd or gzip"), "{err}");
        assert!(matches!(
            decode(CHAT, Some("zstd"), b"not zstd", 10),
            Err(DecodeError::Corrupt("zstd", _))
        ));
        assert!(matches!(
            decode(CHAT, Some("gzip"), b"not gzip", 10),
            Err(DecodeError::Corrupt("gzip", _))
        ));
    }
}
