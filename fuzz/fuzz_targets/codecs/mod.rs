//! The proxy's response codecs (proxy/src/response/: the chunk and one
//! codec per API), without the stream machinery above them, for the
//! `response_codecs` target. A file of its own so the `#[path]`s below are
//! relative to this directory.

#[path = "../../../proxy/src/response/codec.rs"]
pub mod codec;
#[path = "../../../proxy/src/response/lenient.rs"]
pub mod lenient;
#[path = "../../../proxy/src/response/wire.rs"]
pub mod wire;
#[path = "../../../proxy/src/response/chunk.rs"]
pub mod chunk;
#[path = "../../../proxy/src/response/ollama.rs"]
pub mod ollama;
#[path = "../../../proxy/src/response/openai.rs"]
pub mod openai;
#[path = "../../../proxy/src/response/responses.rs"]
pub mod responses;
#[path = "../../../proxy/src/response/messages.rs"]
pub mod messages;
#[path = "../../../proxy/src/response/gemini.rs"]
pub mod gemini;
