//! `hello`: tags every request with a header naming the plugin, so you can
//! see a plugin chain work end to end.
//!
//! Config: `greeting` (default "hello from kiln").

use kiln_plugin::{Decision, Modification, Plugin, Request};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_greeting")]
    pub greeting: String,
}

fn default_greeting() -> String {
    "hello from kiln".into()
}

pub struct Hello;

impl Plugin for Hello {
    type Config = Config;

    fn on_request(config: &Config, _request: &Request) -> Decision {
        Modification::default()
            .set_header("x-kiln-hello", &config.greeting)
            .into()
    }
}

kiln_plugin::export_plugin!(Hello);

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin::{HeaderEdit, Route, parse_config};

    #[test]
    fn adds_the_greeting_header() {
        let config = parse_config::<Hello>(r#"{"greeting":"hi"}"#).unwrap();
        let decision =
            Hello::on_request(&config, &Request::new(Route::OllamaChat, "/api/chat", "{}"));
        let Decision::Modify(m) = decision else {
            panic!("expected a modification, got {decision:?}")
        };
        assert_eq!(
            m.header_edits,
            vec![HeaderEdit::Set("x-kiln-hello".into(), "hi".into())]
        );
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        assert!(parse_config::<Hello>(r#"{"greting":"hi"}"#).is_err());
    }
}
