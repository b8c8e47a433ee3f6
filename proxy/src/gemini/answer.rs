//! Ollama's answer as Gemini's, as it arrives: each NDJSON line of a
//! streamed `/api/chat` answer becomes one `GenerateContentResponse` chunk
//! (an SSE event; [`ToArray`] turns the events into the JSON array a client
//! without `alt=sse` reads), so nothing waits for the whole answer. An
//! answer that does not stream (generate, countTokens, embeddings, an
//! error) is one JSON object, read whole within `limits.max_body_bytes` and
//! rewritten once.
//!
//! Both are [`Transform`]s: the translation is per line and needs the line
//! framing the response plugins use (`framing`).

use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};

use super::{Method, error_json};
use crate::body::{BoxError, RespBody, Transform, Transformed};
use crate::framing::{Format, Framer, sse_data};
use crate::response::wire::frame_event;

/// How one answer is translated.
#[derive(Clone, Debug)]
pub struct Plan {
    pub method: Method,
    /// `:streamGenerateContent` with `alt=sse`; without it, the events
    /// become a JSON array after the response hooks ([`ToArray`]).
    pub sse: bool,
    pub include_thoughts: bool,
    /// `modelVersion` in each chunk: the model the client named.
    pub model: String,
    pub response_id: String,
}

impl Plan {
    /// Ollama's answer with this status, as Gemini's: a streamed 200 goes
    /// line by line; everything else is read whole.
    pub fn translate(&self, status: u16, inner: RespBody, max: usize) -> Transformed<Translate> {
        let streamed = status == 200 && self.method == Method::StreamGenerate;
        let translate = Translate {
            plan: self.clone(),
            status,
            framer: streamed.then(|| Framer::new(Format::Ndjson, max)),
            whole: BytesMut::new(),
            max,
            last_sent: std::time::Instant::now(),
        };
        Transformed::new(inner, translate)
    }

    /// The Content-Type of the translated answer, as the proxy's response
    /// stages read it: SSE for every stream (arrays are made after them).
    pub fn content_type(&self, status: u16) -> &'static str {
        if status == 200 && self.method == Method::StreamGenerate {
            "text/event-stream"
        } else {
            "application/json; charset=utf-8"
        }
    }

    /// One line of Ollama's `/api/chat` stream as a Gemini chunk; `None`
    /// for a line with nothing to say (thinking the client did not ask for).
    pub fn chunk(&self, line: &[u8]) -> Option<Vec<u8>> {
        let v: Value = serde_json::from_slice(line).ok()?;
        let out = match v.get("error") {
            Some(e) => error_json(500, e.as_str().unwrap_or("Ollama failed")),
            None => self.response(&v, false)?,
        };
        serde_json::to_vec(&out).ok()
    }

    /// A chunk with an empty text part: nothing to read, but alive.
    fn empty_chunk(&self) -> Vec<u8> {
        let v = json!({"candidates": [{"content": {"parts": [{"text": ""}], "role": "model"}, "index": 0}],
            "modelVersion": self.model, "responseId": self.response_id});
        to_vec(&v)
    }

    /// A `GenerateContentResponse` from one `/api/chat` chunk or answer.
    fn response(&self, v: &Value, whole: bool) -> Option<Value> {
        let msg = &v["message"];
        let mut parts = Vec::new();
        let s = |k: &str| msg.get(k).and_then(Value::as_str).filter(|t| !t.is_empty());
        if let Some(t) = s("thinking").filter(|_| self.include_thoughts) {
            parts.push(json!({"text": t, "thought": true}));
        }
        if let Some(t) = s("content") {
            parts.push(json!({"text": t}));
        }
        for call in msg
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let f = &call["function"];
            let mut fc = json!({"name": f["name"], "args": f.get("arguments").cloned().unwrap_or(json!({}))});
            if let Some(id) = call.get("id").filter(|i| i.is_string()) {
                fc["id"] = id.clone();
            }
            parts.push(json!({"functionCall": fc}));
        }
        let done = v.get("done").and_then(Value::as_bool) == Some(true);
        if parts.is_empty() {
            if !done && !whole {
                return None;
            }
            // The last chunk carries an (empty) text part, where a response
            // hook can release text it held back.
            parts.push(json!({"text": ""}));
        }
        let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if done {
            candidate["finishReason"] = json!(finish_reason(v));
        }
        let mut out = json!({"candidates": [candidate]});
        if done {
            out["usageMetadata"] = usage(v);
        }
        out["modelVersion"] = json!(self.model);
        out["responseId"] = json!(self.response_id);
        Some(out)
    }

    /// The whole answer of a request that does not stream.
    fn whole(&self, status: u16, body: &[u8]) -> (u16, Vec<u8>) {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        if status != 200 || v.get("error").is_some() {
            let message = v
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
            let status = if status == 200 { 500 } else { status };
            let message = if message.is_empty() {
                format!("Ollama answered {status}")
            } else {
                message
            };
            return (status, to_vec(&error_json(status, &message)));
        }
        let out = match self.method {
            Method::Generate | Method::StreamGenerate => {
                self.response(&v, true).unwrap_or(Value::Null)
            }
            Method::CountTokens => {
                json!({"totalTokens": v["prompt_eval_count"].as_u64().unwrap_or(0)})
            }
            Method::Embed => json!({"embedding": {"values": v["embeddings"][0]}}),
            Method::BatchEmbed => {
                let all = v["embeddings"].as_array().cloned().unwrap_or_default();
                json!({"embeddings": all.into_iter().map(|e| json!({"values": e})).collect::<Vec<_>>()})
            }
        };
        (200, to_vec(&out))
    }
}

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Ollama's `done_reason` as Gemini's `finishReason`.
fn finish_reason(v: &Value) -> &'static str {
    match v.get("done_reason").and_then(Value::as_str) {
        Some("length") => "MAX_TOKENS",
        Some("stop") | None => "STOP",
        Some(_) => "OTHER",
    }
}

/// Ollama's counts as `usageMetadata`. Ollama's `eval_count` includes the
/// thinking tokens and does not split them out, so `candidatesTokenCount`
/// does too and `thoughtsTokenCount` is not given.
fn usage(v: &Value) -> Value {
    let prompt = v["prompt_eval_count"].as_u64().unwrap_or(0);
    let out = v["eval_count"].as_u64().unwrap_or(0);
    json!({"promptTokenCount": prompt, "candidatesTokenCount": out, "totalTokenCount": prompt + out})
}

/// Ollama's answer translated as it arrives (see [`Plan::translate`]).
pub struct Translate {
    plan: Plan,
    status: u16,
    /// Streamed: Ollama's lines.
    framer: Option<Framer>,
    /// Not streamed: the body so far.
    whole: BytesMut,
    max: usize,
    last_sent: std::time::Instant,
}

/// How long hidden thinking goes without a chunk to the client.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(10);

impl Translate {
    /// SSE events for the whole lines framed so far.
    fn drain(&mut self) -> Result<Vec<u8>, BoxError> {
        let mut out = Vec::new();
        let Some(framer) = &mut self.framer else {
            return Ok(out);
        };
        while let Some(line) = framer.next_frame()? {
            match self.plan.chunk(&line) {
                Some(json) => frame_event(&mut out, &[], &json),
                // Thinking the client did not ask for is not sent; after a
                // while of it, an empty chunk tells the client (and the
                // proxy's own idle timeout) that the answer is alive.
                None if self.last_sent.elapsed() >= KEEPALIVE => {
                    frame_event(&mut out, &[], &self.plan.empty_chunk());
                }
                None => {}
            }
        }
        if !out.is_empty() {
            self.last_sent = std::time::Instant::now();
        }
        Ok(out)
    }
}

impl Transform for Translate {
    fn data(&mut self, data: Bytes) -> Result<Vec<u8>, BoxError> {
        if let Some(framer) = &mut self.framer {
            framer.push_bytes(data);
            return self.drain();
        }
        if self.whole.len() + data.len() > self.max {
            return Err(format!(
                "Ollama's answer is larger than limits.max_body_bytes = {} bytes",
                self.max
            )
            .into());
        }
        self.whole.extend_from_slice(&data);
        Ok(Vec::new())
    }

    fn end(&mut self) -> Result<Vec<u8>, BoxError> {
        let Some(framer) = &mut self.framer else {
            return Ok(self.plan.whole(self.status, &self.whole).1);
        };
        let mut out = Vec::new();
        if let Some(json) = framer.finish()?.and_then(|rest| self.plan.chunk(&rest)) {
            frame_event(&mut out, &[], &json);
        }
        Ok(out)
    }
}

/// SSE events of Gemini chunks as the JSON array `streamGenerateContent`
/// sends without `alt=sse`: `[`, the chunks separated by `,\r\n`, `]`,
/// each chunk as soon as its event is whole.
pub struct ToArray {
    framer: Framer,
    started: bool,
}

impl ToArray {
    pub fn new(inner: RespBody, max: usize) -> Transformed<ToArray> {
        let to_array = ToArray {
            framer: Framer::new(Format::Sse, max),
            started: false,
        };
        Transformed::new(inner, to_array)
    }

    fn element(&mut self, out: &mut Vec<u8>, event: &[u8]) {
        let Some(data) = sse_data(event) else {
            return;
        };
        out.extend_from_slice(if self.started { b",\r\n" } else { b"[" });
        self.started = true;
        out.extend_from_slice(&data);
    }
}

impl Transform for ToArray {
    fn data(&mut self, data: Bytes) -> Result<Vec<u8>, BoxError> {
        self.framer.push_bytes(data);
        let mut out = Vec::new();
        while let Some(event) = self.framer.next_frame()? {
            self.element(&mut out, &event);
        }
        Ok(out)
    }

    fn end(&mut self) -> Result<Vec<u8>, BoxError> {
        let mut out = Vec::new();
        if let Some(rest) = self.framer.finish()? {
            self.element(&mut out, &rest);
        }
        if !self.started {
            out.push(b'[');
        }
        out.extend_from_slice(b"]");
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::body::Frame;

    fn plan(method: Method) -> Plan {
        Plan {
            method,
            sse: true,
            include_thoughts: false,
            model: "gemma3:4b".into(),
            response_id: "r1".into(),
        }
    }

    fn body(chunks: &[&'static str]) -> RespBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    #[tokio::test]
    async fn a_stream_becomes_gemini_events_line_by_line() {
        let up = body(&[
            "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"done\":false}\n{\"model\":\"m\",\"mess",
            "age\":{\"role\":\"assistant\",\"content\":\"lo\"},\"done\":false}\n",
            "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"length\",\"prompt_eval_count\":5,\"eval_count\":2}\n",
        ]);
        let out = plan(Method::StreamGenerate)
            .translate(200, up, 1 << 20)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let text = String::from_utf8(out.to_vec()).unwrap();
        let events: Vec<Value> = text
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
            .collect();
        assert_eq!(events.len(), 3);
        assert_eq!(
            events[0]["candidates"][0]["content"]["parts"][0]["text"],
            "Hel"
        );
        assert_eq!(
            events[1]["candidates"][0]["content"]["parts"][0]["text"],
            "lo"
        );
        assert_eq!(events[2]["candidates"][0]["finishReason"], "MAX_TOKENS");
        assert_eq!(
            events[2]["usageMetadata"],
            json!({"promptTokenCount": 5, "candidatesTokenCount": 2, "totalTokenCount": 7})
        );
        let array = ToArray::new(body_from(text), 1 << 20)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let array: Vec<Value> = serde_json::from_slice(&array).unwrap();
        assert_eq!(array, events);
    }

    /// Thinking the client did not ask for is not sent, but a long spell of
    /// it gets an empty chunk, so neither the client nor the proxy's idle
    /// timeout takes the answer for dead.
    #[tokio::test]
    async fn hidden_thinking_sends_an_empty_chunk_now_and_then() {
        let thinking = "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"\",\"thinking\":\"hm\"},\"done\":false}\n";
        let mut body =
            plan(Method::StreamGenerate).translate(200, body(&[thinking, thinking]), 1 << 20);
        let t = body.transform_mut();
        assert!(t.framer.as_mut().unwrap().next_frame().unwrap().is_none());
        t.framer.as_mut().unwrap().push(thinking.as_bytes());
        assert!(
            t.drain().unwrap().is_empty(),
            "recent output: nothing to send"
        );
        t.last_sent = std::time::Instant::now() - KEEPALIVE;
        t.framer.as_mut().unwrap().push(thinking.as_bytes());
        let out = String::from_utf8(t.drain().unwrap()).unwrap();
        let v: Value = serde_json::from_str(out.strip_prefix("data: ").unwrap().trim()).unwrap();
        assert_eq!(
            v["candidates"][0]["content"]["parts"],
            json!([{"text": ""}])
        );
    }

    fn body_from(s: String) -> RespBody {
        crate::body::full(s)
    }

    #[test]
    fn whole_answers_and_errors_translate() {
        let p = plan(Method::Generate);
        let (status, b) = p.whole(
            200,
            br#"{"model":"m","message":{"role":"assistant","content":"","tool_calls":[{"id":"call_1","function":{"index":0,"name":"get_weather","arguments":{"city":"Paris"}}}]},"done":true,"done_reason":"stop","prompt_eval_count":3,"eval_count":4}"#,
        );
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            v["candidates"][0]["content"]["parts"][0]["functionCall"],
            json!({"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"})
        );
        assert_eq!(v["candidates"][0]["finishReason"], "STOP");
        let (status, b) = p.whole(404, br#"{"error":"model 'x' not found"}"#);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(status, 404);
        assert_eq!(v["error"]["status"], "NOT_FOUND");
        assert_eq!(v["error"]["message"], "model 'x' not found");
        let (_, b) = plan(Method::CountTokens).whole(
            200,
            br#"{"prompt_eval_count":12,"eval_count":1,"done":true}"#,
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&b).unwrap(),
            json!({"totalTokens": 12})
        );
        let (_, b) = plan(Method::BatchEmbed).whole(200, br#"{"embeddings":[[0.1],[0.2]]}"#);
        assert_eq!(
            serde_json::from_slice::<Value>(&b).unwrap(),
            json!({"embeddings": [{"values": [0.1]}, {"values": [0.2]}]})
        );
    }
}
