use super::*;
use serde_json::json;

#[test]
fn unknown_fields_survive_a_round_trip() {
    let src = json!({"model":"m","messages":[{"role":"user","content":"hi","images":["x"]}],"stream":false,"format":"json","options":{"seed":1}});
    let body = Body::parse(Route::OllamaChat, src.to_string().as_bytes()).unwrap();
    let back: Value = serde_json::from_slice(&body.to_bytes()).unwrap();
    assert_eq!(back, src);
}

#[test]
fn texts_cover_prompts_messages_parts_and_inputs() {
    let chat = json!({"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"u"}}]},{"role":"assistant","content":"b"}]});
    let body = Body::parse(Route::OpenaiChat, chat.to_string().as_bytes()).unwrap();
    assert_eq!(body.texts(), vec!["a", "b"]);
    let gen_body = json!({"model":"m","system":"s","prompt":"p"});
    assert_eq!(
        Body::parse(Route::OllamaGenerate, gen_body.to_string().as_bytes())
            .unwrap()
            .texts(),
        vec!["s", "p"]
    );
    let embed = json!({"model":"m","input":["x","y"]});
    assert_eq!(
        Body::parse(Route::OllamaEmbed, embed.to_string().as_bytes())
            .unwrap()
            .texts(),
        vec!["x", "y"]
    );
}

#[test]
fn max_tokens_maps_to_each_api() {
    let mut b = Body::parse(Route::OllamaChat, br#"{"model":"m"}"#).unwrap();
    assert_eq!(b.max_tokens(), None);
    b.set_max_tokens(64);
    assert_eq!(b.max_tokens(), Some(64));
    assert_eq!(
        serde_json::from_slice::<Value>(&b.to_bytes()).unwrap()["options"]["num_predict"],
        64
    );

    let mut b = Body::parse(
        Route::OpenaiChat,
        br#"{"model":"m","max_completion_tokens":900}"#,
    )
    .unwrap();
    assert_eq!(b.max_tokens(), Some(900));
    b.set_max_tokens(100);
    let v: Value = serde_json::from_slice(&b.to_bytes()).unwrap();
    assert_eq!(
        (
            v["max_tokens"].as_u64(),
            v["max_completion_tokens"].as_u64()
        ),
        (Some(100), Some(100))
    );
}

#[test]
fn responses_and_messages_bodies_survive_a_round_trip() {
    let responses = json!({"model":"m","input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}],"id":"x"}],"instructions":"s","max_output_tokens":5,"stream":true,"tools":[{"type":"function","name":"f"}],"reasoning":{"effort":"low"}});
    let body = Body::parse(Route::OpenaiResponses, responses.to_string().as_bytes()).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&body.to_bytes()).unwrap(),
        responses
    );
    let messages = json!({"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}},{"type":"image","source":{}}]}],"system":[{"type":"text","text":"s"}],"max_tokens":9,"temperature":0.2,"metadata":{"user_id":"u"}});
    let body = Body::parse(Route::AnthropicMessages, messages.to_string().as_bytes()).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&body.to_bytes()).unwrap(),
        messages
    );
}

#[test]
fn responses_texts_cover_instructions_and_every_input_shape() {
    let texts = |v: Value| {
        Body::parse(Route::OpenaiResponses, v.to_string().as_bytes())
            .unwrap()
            .texts()
    };
    assert_eq!(texts(json!({"model":"m","input":"hi"})), vec!["hi"]);
    assert_eq!(
        texts(json!({"model":"m","instructions":"s","input":[
            {"role":"user","content":"a"},
            {"type":"message","role":"user","content":[{"type":"input_text","text":"b"},{"type":"input_image","image_url":"u"}]},
            {"role":"assistant","content":[{"type":"output_text","text":"c"}]},
            {"type":"function_call_output","call_id":"call_1","output":"d"}
        ]})),
        vec!["s", "a", "b", "c", "d"]
    );
    assert!(texts(json!({"model":"m"})).is_empty());

    let mut b = Body::parse(
        Route::OpenaiResponses,
        br#"{"model":"m","input":[{"role":"user","content":[{"type":"input_text","text":"x"}]}]}"#,
    )
    .unwrap();
    b.for_each_text_mut(|t| *t = t.to_uppercase());
    let v: Value = serde_json::from_slice(&b.to_bytes()).unwrap();
    assert_eq!(v["input"][0]["content"][0]["text"], "X");
}

#[test]
fn anthropic_texts_cover_system_and_content_blocks() {
    let texts = |v: Value| {
        Body::parse(Route::AnthropicMessages, v.to_string().as_bytes())
            .unwrap()
            .texts()
    };
    assert_eq!(
        texts(json!({"model":"m","system":"s","messages":[{"role":"user","content":"a"}]})),
        vec!["s", "a"]
    );
    assert_eq!(
        texts(
            json!({"model":"m","system":[{"type":"text","text":"s1"},{"type":"text","text":"s2"}],"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image","source":{}}]},{"role":"assistant","content":"b"}]})
        ),
        vec!["s1", "s2", "a", "b"]
    );
    // What a tool gave back is input too.
    assert_eq!(
        texts(
            json!({"model":"m","messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"r1"},{"type":"tool_result","tool_use_id":"t2","content":[{"type":"text","text":"r2"}]}]}]})
        ),
        vec!["r1", "r2"]
    );
}

#[test]
fn responses_and_messages_caps_use_their_own_fields() {
    let mut b = Body::parse(Route::OpenaiResponses, br#"{"model":"m","input":"x"}"#).unwrap();
    assert!(b.generates());
    assert_eq!(b.max_tokens(), None);
    b.set_max_tokens(50);
    let v: Value = serde_json::from_slice(&b.to_bytes()).unwrap();
    assert_eq!(v["max_output_tokens"], 50);
    assert!(
        v.get("max_tokens").is_none(),
        "the Responses API has no max_tokens"
    );

    let mut b = Body::parse(
        Route::AnthropicMessages,
        br#"{"model":"m","max_tokens":4096}"#,
    )
    .unwrap();
    assert_eq!(b.max_tokens(), Some(4096));
    b.set_max_tokens(50);
    let v: Value = serde_json::from_slice(&b.to_bytes()).unwrap();
    assert_eq!(v["max_tokens"], 50);
}

#[test]
fn only_chat_routes_with_a_system_role_expose_messages() {
    for (route, body) in [
        (Route::OllamaChat, r#"{"model":"m","messages":[]}"#),
        (Route::OpenaiChat, r#"{"model":"m","messages":[]}"#),
    ] {
        assert!(
            Body::parse(route, body.as_bytes())
                .unwrap()
                .messages_mut()
                .is_some()
        );
    }
    for (route, body) in [
        (Route::OpenaiResponses, r#"{"model":"m","input":"x"}"#),
        (Route::AnthropicMessages, r#"{"model":"m","messages":[]}"#),
    ] {
        assert!(
            Body::parse(route, body.as_bytes())
                .unwrap()
                .messages_mut()
                .is_none()
        );
    }
}

#[test]
fn wrong_shapes_are_errors_not_panics() {
    assert!(Body::parse(Route::OllamaChat, b"not json").is_err());
    assert!(
        Body::parse(Route::OllamaChat, br#"{"messages":[]}"#).is_err(),
        "model is required"
    );
    assert!(Body::parse(Route::OllamaChat, br#"{"model":"m","messages":"x"}"#).is_err());
    assert!(Body::parse(Route::AnthropicMessages, br#"{"model":"m","messages":"x"}"#).is_err());
    assert!(Body::parse(Route::OpenaiResponses, br#"{"model":"m","instructions":7}"#).is_err());
}

/// Every field of each API that Ollama renders into the prompt, with the
/// word `SEEN` in it; each must be visited, and rewritable.
#[test]
fn texts_cover_every_field_the_model_reads() {
    let cases = [
        (
            Route::OllamaGenerate,
            json!({"model":"m","prompt":"SEEN p","template":"SEEN {{ .Prompt }}","suffix":"SEEN s","raw":false}),
            3,
        ),
        (
            Route::OllamaChat,
            json!({"model":"m","messages":[
                {"role":"assistant","content":"","thinking":"SEEN thought",
                 "tool_calls":[{"function":{"name":"SEEN_f","arguments":{"SEEN_key":"SEEN value","n":[1,"SEEN"]}}}]},
                {"role":"tool","tool_name":"SEEN_tool","content":"SEEN result","images":["U0VFTg=="]}],
              "tools":[{"type":"function","function":{"name":"f","description":"SEEN description",
                 "parameters":{"type":"object","properties":{"q":{"type":"string","description":"SEEN param"}}}}}]}),
            9,
        ),
        (
            Route::OpenaiChat,
            json!({"model":"m","messages":[
                {"role":"assistant","content":null,"reasoning":"SEEN thought",
                 "tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"x\":\"SEEN\"}"}}]},
                {"role":"tool","tool_call_id":"c1","content":"SEEN result"}],
              "tools":[{"type":"function","function":{"name":"f","description":"SEEN description"}}]}),
            4,
        ),
        (
            Route::OpenaiCompletions,
            json!({"model":"m","prompt":"SEEN p","suffix":"SEEN s"}),
            2,
        ),
        (
            Route::OpenaiResponses,
            json!({"model":"m","input":[
                {"type":"reasoning","id":"r1","summary":[],"encrypted_content":"SEEN thought"},
                {"type":"function_call","call_id":"c1","name":"f","arguments":"{\"x\":\"SEEN\"}"},
                {"type":"function_call_output","call_id":"c1","output":"SEEN output","content":"decoy"},
                {"type":"function_call_output","call_id":"c2","output":[{"type":"input_text","text":"SEEN part"}]}],
              "tools":[{"type":"function","name":"f","description":"SEEN description","parameters":{}}]}),
            5,
        ),
        (
            Route::AnthropicMessages,
            json!({"model":"m","max_tokens":9,"messages":[
                {"role":"assistant","content":[
                    {"type":"thinking","thinking":"SEEN thought","signature":"sig"},
                    {"type":"tool_use","id":"t1","name":"f","input":{"SEEN_key":"SEEN value"}}]},
                {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"SEEN result"}]}]}],
              "tools":[{"name":"f","description":"SEEN description","input_schema":{"type":"object"}}]}),
            5,
        ),
    ];
    for (route, body, expected) in cases {
        let mut b = Body::parse(route, body.to_string().as_bytes()).unwrap();
        let seen = b.texts().iter().filter(|t| t.contains("SEEN")).count();
        assert_eq!(seen, expected, "{route:?}: {:?}", b.texts());
        b.for_each_text_mut(|t| *t = t.replace("SEEN", "[x]"));
        let out = String::from_utf8(b.to_bytes()).unwrap();
        assert!(!out.contains("SEEN"), "{route:?}: not rewritten: {out}");
        assert!(
            !b.texts()
                .iter()
                .any(|t| t == "sig" || t == "c1" || t == "U0VFTg=="),
            "{route:?}: ids, signatures and images are not text"
        );
    }
}

#[test]
fn gemini_bodies_expose_texts_system_and_token_cap() {
    let raw = r#"{"contents":[{"role":"user","parts":[{"text":"hello"},{"inlineData":{"mimeType":"image/png","data":"iVBOR"}}]}],
        "systemInstruction":{"parts":[{"text":"Be brief."}]},
        "generationConfig":{"maxOutputTokens":4096,"temperature":0.1},
        "tools":[{"functionDeclarations":[{"name":"get_weather"}]}],"safetySettings":[]}"#;
    let mut b = Body::parse(Route::GeminiGenerate, raw.as_bytes()).unwrap();
    let mut texts = b.texts();
    texts.sort();
    assert_eq!(
        texts,
        [
            "Be brief.",
            "functionDeclarations",
            "get_weather",
            "hello",
            "name"
        ]
    );
    assert_eq!(b.max_tokens(), Some(4096));
    assert!(b.generates() && b.model().is_none());
    b.set_max_tokens(256);
    let v: serde_json::Value = serde_json::from_slice(&b.to_bytes()).unwrap();
    assert_eq!(
        v["generationConfig"],
        serde_json::json!({"maxOutputTokens": 256, "temperature": 0.1})
    );
    assert_eq!(
        v["safetySettings"],
        serde_json::json!([]),
        "unknown fields are kept"
    );
    let embed = Body::parse(
        Route::GeminiEmbed,
        br#"{"requests":[{"model":"models/m","content":{"parts":[{"text":"a"}]}}]}"#,
    )
    .unwrap();
    assert_eq!(embed.texts(), ["a"]);
}
