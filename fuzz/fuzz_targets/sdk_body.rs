//! The plugin SDK's body reader (plugins/sdk/src/body.rs): any body, any
//! route, never a panic; a body it reads survives a write and a re-read
//! with the same text, and an identity rewrite of every text changes
//! nothing, so a policy that edits nothing forwards what it read.
#![no_main]

use kiln_plugin::Route;
use kiln_plugin::body::Body;
use libfuzzer_sys::fuzz_target;

const ROUTES: [Route; 12] = [
    Route::OllamaGenerate,
    Route::OllamaChat,
    Route::OllamaEmbed,
    Route::OpenaiChat,
    Route::OpenaiCompletions,
    Route::OpenaiEmbeddings,
    Route::OpenaiResponses,
    Route::AnthropicMessages,
    Route::GeminiGenerate,
    Route::GeminiCountTokens,
    Route::GeminiEmbed,
    Route::Other,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let route = ROUTES[pick as usize % ROUTES.len()];
    let Ok(body) = Body::parse(route, bytes) else {
        return;
    };
    let texts = body.texts();
    let written = body.to_bytes();
    let again = Body::parse(route, &written).expect("a body the SDK wrote reads back");
    assert_eq!(again.texts(), texts);
    // Compared with the re-read body, not the first write: serde_json's
    // default float parsing is not correctly rounded, so a number beyond f64's
    // precision may move by one unit in the last place per round trip.
    let mut same = again.clone();
    same.for_each_text_mut(|_| {});
    assert_eq!(
        same.to_bytes(),
        again.to_bytes(),
        "an identity rewrite changed the body"
    );
    let mut marked = again;
    marked.for_each_text_mut(|t| t.push('\u{1}'));
    assert!(marked.texts().iter().all(|t| t.ends_with('\u{1}')));
});
