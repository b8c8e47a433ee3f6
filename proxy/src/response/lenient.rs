//! The lenient typed reading the codecs share: a chunk is read into
//! structs of borrowed fields, and a field of an unexpected type reads as
//! nothing ([`Scalar::Other`], an empty [`Obj`], [`List`] or [`First`])
//! instead of failing the whole chunk, so one odd field does not hide the
//! rest of it.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A typed parse of a JSON object; `None` for anything else. Valid UTF-8
/// (every chunk Ollama writes) is checked once, so the parser does not
/// check each string again.
///
/// Boxed where it is made: the readings are large structs of borrowed
/// fields, which every layer of the parse would otherwise copy again.
pub fn typed<'a, P: Deserialize<'a>>(json: &'a [u8]) -> Option<Box<P>> {
    let parsed = match std::str::from_utf8(json) {
        Ok(text) => serde_json::from_str::<Obj<Box<P>>>(text),
        Err(_) => serde_json::from_slice::<Obj<Box<P>>>(json),
    };
    parsed.ok()?.0
}

/// A leaf the codecs read, which reads as [`Scalar::Other`] when it holds
/// something of another type, so one odd field (OpenAI content parts
/// instead of a string) does not hide the rest of a chunk.
#[derive(Debug, Default)]
pub enum Scalar<'a> {
    Str(Cow<'a, str>),
    U64(u64),
    Bool(bool),
    #[default]
    Other,
}

impl<'a> Scalar<'a> {
    pub fn str(self) -> Option<Cow<'a, str>> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn u64(&self) -> Option<u64> {
        match self {
            Scalar::U64(n) => Some(*n),
            _ => None,
        }
    }

    pub fn is_true(&self) -> bool {
        matches!(self, Scalar::Bool(true))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Scalar<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(s)))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
                Ok(Scalar::U64(n))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
                Ok(u64::try_from(n).map_or(Scalar::Other, Scalar::U64))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(b))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The scalars a lenient reading skips: they read as `$none`.
macro_rules! skip_scalars {
    ($none:expr) => {
        fn visit_borrowed_str<E>(self, _: &'de str) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($none)
        }
    };
}

/// An object the codecs read into `T`, or `None` when the field holds
/// something else (an error line's `message` is not a chat message).
#[derive(Debug)]
pub struct Obj<T>(pub Option<T>);

impl<T> Default for Obj<T> {
    fn default() -> Self {
        Obj(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|t| Obj(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Obj(None))
            }
            skip_scalars!(Obj(None));
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A list the codecs read, its objects read into `T` (other items
/// skipped); empty when the field holds something else.
#[derive(Debug)]
pub struct List<T>(pub Vec<T>);

impl<T> Default for List<T> {
    fn default() -> Self {
        List(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = List<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(Obj(item)) = seq.next_element::<Obj<T>>()? {
                    items.extend(item);
                }
                Ok(List(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(List(Vec::new()))
            }
            skip_scalars!(List(Vec::new()));
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The first object of a list, the others skipped without being collected
/// (no allocation per chunk), and how many items the list has.
#[derive(Debug)]
pub struct First<T> {
    /// Boxed: a chunk's first choice is a large struct of borrowed
    /// fields, and each layer of the typed reading (the list, the object,
    /// the chunk) would move it again; these copies took a fifth of reading
    /// an OpenAI event.
    pub first: Option<Box<T>>,
    pub len: usize,
    /// The field held a list.
    pub list: bool,
}

impl<T> Default for First<T> {
    fn default() -> Self {
        First {
            first: None,
            len: 0,
            list: false,
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for First<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Option<First<T>>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut list = First {
                    list: true,
                    ..First::default()
                };
                if let Some(Obj(first)) = seq.next_element::<Obj<Box<T>>>()? {
                    (list.first, list.len) = (first, 1);
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    list.len += 1;
                }
                Ok(Some(list))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(None)
            }
            skip_scalars!(None);
        }
        // Not a list reads as an absent one.
        Ok(d.deserialize_any(V(std::marker::PhantomData))?
            .unwrap_or_default())
    }
}
