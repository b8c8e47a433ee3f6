//! Ollama model references (packager/src/model_ref.rs): every part of an
//! accepted name becomes a directory or file name under OLLAMA_MODELS, so
//! an accepted name must give a plain relative path (no `..`, no root, no
//! separators inside a part), and its canonical and short forms must parse
//! back to the same reference.
#![no_main]
#![allow(dead_code)]

#[path = "../../packager/src/model_ref.rs"]
mod model_ref;

use libfuzzer_sys::fuzz_target;
use model_ref::ModelRef;
use std::path::Component;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(model) = ModelRef::parse(input) else {
        return;
    };
    let path = model.manifest_path();
    let parts: Vec<_> = path.components().collect();
    assert_eq!(parts.len(), 5, "{path:?}: a part held a separator");
    assert!(
        parts.iter().all(|c| matches!(c, Component::Normal(_))),
        "{path:?} escapes the models directory"
    );
    for part in [&model.host, &model.namespace, &model.model, &model.tag] {
        assert!(
            !part.starts_with('.') && !part.contains(['/', '\\', '\0']),
            "{part:?}"
        );
    }
    assert_eq!(ModelRef::parse(&model.to_string()).as_ref(), Ok(&model));
    assert_eq!(ModelRef::parse(&model.short()).as_ref(), Ok(&model));
});
