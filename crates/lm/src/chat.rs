//! Chat formatting by rendering the model's own Jinja template, never a re-typed copy.

use minijinja::{Environment, Error, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

use crate::{LmError, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn user(s: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: s.into(),
        }
    }
    pub fn system(s: impl Into<String>) -> Self {
        Self {
            role: "system".into(),
            content: s.into(),
        }
    }
    pub fn assistant(s: impl Into<String>) -> Self {
        Self {
            role: "assistant".into(),
            content: s.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

/// Template instructions a render may take: real chat templates need a few thousand; this
/// bounds a hostile or broken one to well under a second.
pub const TEMPLATE_FUEL: u64 = 2_000_000;

fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    /// Renders like transformers' `apply_chat_template(tokenize=False)`; `prefill` is appended
    /// after the generation prompt so the assistant turn starts with it (prefilling attacks,
    /// forced harmful prefixes).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        prefill: Option<&str>,
    ) -> Result<String> {
        let mut env = Environment::new();
        // Same Jinja settings as transformers.
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("static syntax config"),
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // A template comes with the model file: one that loops without end must fail, not hang.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |_fmt: String| -> String {
            "26 Jul 2024".to_string()
        });
        env.add_template("chat", &self.source)
            .map_err(|e| LmError::Template(format!("parsing chat template: {e:#}")))?;
        let tmpl = env.get_template("chat").expect("just added");
        let mut out = tmpl
            .render(context! {
                messages => Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| {
                if e.kind() == ErrorKind::OutOfFuel {
                    LmError::Template(format!(
                        "rendering chat template: stopped after {TEMPLATE_FUEL} steps (a loop without end?)"
                    ))
                } else {
                    LmError::Template(format!("rendering chat template: {e:#}"))
                }
            })?;
        if let Some(p) = prefill {
            out.push_str(p);
        }
        Ok(out)
    }
}

/// Stands in for the request while locating it in a rendered chat: a private-use character no
/// template adds or strips.
const REQUEST_MARKER: &str = "\u{E000}";

impl ChatTemplate {
    /// Renders like [`Self::render`] and returns where the content of the last user message
    /// lies in the text (a byte range), found by rendering once with a marker in its place:
    /// the loss masks of training then follow the template's own layout rather than a count
    /// of one model's template tokens. Errors when the template repeats, drops or rewrites the
    /// request.
    pub fn render_with_request(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        prefill: Option<&str>,
    ) -> Result<(String, std::ops::Range<usize>)> {
        let last_user = messages
            .iter()
            .rposition(|m| m.role == "user")
            .ok_or_else(|| LmError::Template("the chat has no user message".into()))?;
        let mut marked = messages.to_vec();
        marked[last_user].content = REQUEST_MARKER.into();
        let text = self.render(&marked, add_generation_prompt, prefill)?;
        let mut at = text.match_indices(REQUEST_MARKER).map(|(i, _)| i);
        let (Some(start), None) = (at.next(), at.next()) else {
            return Err(LmError::Template(
                "the template does not render the request exactly once".into(),
            ));
        };
        let content = &messages[last_user].content;
        let expected = format!(
            "{}{content}{}",
            &text[..start],
            &text[start + REQUEST_MARKER.len()..]
        );
        let rendered = self.render(messages, add_generation_prompt, prefill)?;
        if rendered != expected {
            return Err(LmError::Template(
                "the template rewrites the request text (e.g. trims it); its tokens cannot be located".into(),
            ));
        }
        Ok((rendered, start..start + content.len()))
    }
}
