//! What a plugin answers.

use crate::bindings::kiln::filter::types as wit;
use crate::body::Body;

/// The plugin's answer for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Pass the request on unchanged.
    Allow,
    /// Pass it on with these changes.
    Modify(Modification),
    /// Answer the client now, in its API's error format.
    Reject(Rejection),
}

/// Changes to the request: a whole new body and/or header edits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Modification {
    pub body: Option<Vec<u8>>,
    pub header_edits: Vec<HeaderEdit>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Replace every header of this name by one with this value.
    Set(String, String),
    /// Remove every header of this name.
    Remove(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// 400..=599.
    pub status: u16,
    pub message: String,
    pub headers: Vec<(String, String)>,
}

impl Decision {
    /// Refuses the request with `status` (400..=599) and a message for the client.
    pub fn reject(status: u16, message: impl Into<String>) -> Self {
        Decision::Reject(Rejection::new(status, message))
    }

    /// Replaces the body with the serialized `body`.
    pub fn rewrite(body: &Body) -> Self {
        Decision::Modify(Modification::default().with_body(body.to_bytes()))
    }

    /// The rejection, if this decision is one; handy in tests.
    pub fn as_rejection(&self) -> Option<&Rejection> {
        match self {
            Decision::Reject(r) => Some(r),
            _ => None,
        }
    }

    /// The new body parsed as JSON, if this decision rewrites the body; handy in tests.
    pub fn rewritten_json(&self) -> Option<serde_json::Value> {
        match self {
            Decision::Modify(Modification { body: Some(b), .. }) => serde_json::from_slice(b).ok(),
            _ => None,
        }
    }
}

impl Rejection {
    /// A rejection with `status` (400..=599) and a message for the client;
    /// add headers with [`Rejection::with_header`], then `.into()` a `Decision`.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Rejection {
            status,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a response header, e.g. `retry-after`.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }
}

impl Modification {
    pub fn with_body(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self
    }

    pub fn set_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.header_edits
            .push(HeaderEdit::Set(name.to_ascii_lowercase(), value.into()));
        self
    }

    pub fn remove_header(mut self, name: &str) -> Self {
        self.header_edits
            .push(HeaderEdit::Remove(name.to_ascii_lowercase()));
        self
    }

    /// True when nothing would change: such a decision is sent as `Allow`.
    pub fn is_empty(&self) -> bool {
        self.body.is_none() && self.header_edits.is_empty()
    }
}

impl From<Modification> for Decision {
    fn from(m: Modification) -> Self {
        if m.is_empty() {
            Decision::Allow
        } else {
            Decision::Modify(m)
        }
    }
}

impl From<Rejection> for Decision {
    fn from(r: Rejection) -> Self {
        Decision::Reject(r)
    }
}

fn header(name: String, value: String) -> wit::Header {
    wit::Header { name, value }
}

impl From<Decision> for wit::Decision {
    fn from(d: Decision) -> Self {
        match d {
            Decision::Allow => wit::Decision::Allow,
            Decision::Modify(m) => wit::Decision::Modify(wit::Modification {
                body: m.body,
                header_edits: m
                    .header_edits
                    .into_iter()
                    .map(|e| match e {
                        HeaderEdit::Set(n, v) => wit::HeaderEdit::Set(header(n, v)),
                        HeaderEdit::Remove(n) => wit::HeaderEdit::Remove(n),
                    })
                    .collect(),
            }),
            Decision::Reject(r) => wit::Decision::Reject(wit::Rejection {
                status: r.status,
                message: r.message,
                headers: r.headers.into_iter().map(|(n, v)| header(n, v)).collect(),
            }),
        }
    }
}
