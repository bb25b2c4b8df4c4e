//! Conversations as plain text. GPT-2 has no chat template, so TRL's conversational rows (lists
//! of `{"role", "content"}`) are flattened with this one, one turn per line:
//!
//! ```text
//! System: You are terse.
//! User: Is the film good?
//! Assistant: Yes.
//! ```
//!
//! Each turn is `<Role>: <content>\n`, the role capitalised (`system`, `user`, `assistant`, or
//! any other role as given). A prompt is its turns followed by `Assistant:` (the turn the model
//! writes), and a completion is its turns with the first `Assistant:` left out, so prompt +
//! completion is exactly the text of the whole conversation.

use serde_json::Value;

use super::DataError;
use super::rows::RowAt;

/// Which part of a conversation a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// A whole conversation (SFT's `messages`).
    Whole,
    /// The turns before the model's (a prompt): ends with `Assistant:`.
    Prompt,
    /// The model's turns (a completion, chosen or rejected): starts after `Assistant:`.
    Completion,
}

const ASSISTANT: &str = "Assistant:";

/// The text of `field`: a string as is, or a list of messages flattened as `part`.
pub fn text_or_messages(row: &Value, field: &str, part: Part, at: RowAt) -> Result<String, DataError> {
    match row.get(field) {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(messages)) => render(messages, field, part, at),
        _ => Err(at.malformed(field, "a string or a list of {\"role\", \"content\"} messages")),
    }
}

/// Flattens `messages` (the value of `field`) as `part` (see the module docs).
pub fn render(messages: &[Value], field: &str, part: Part, at: RowAt) -> Result<String, DataError> {
    if messages.is_empty() {
        return Err(at.malformed(field, "at least one message"));
    }
    let mut text = String::new();
    for (i, message) in messages.iter().enumerate() {
        let get = |key: &str| {
            message
                .get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| at.malformed(&format!("{field}[{i}].{key}"), "a string"))
        };
        let (role, content) = (get("role")?, get("content")?);
        text.push_str(&role_name(role));
        text.push_str(": ");
        text.push_str(content);
        text.push('\n');
    }
    Ok(match part {
        Part::Whole => text,
        Part::Prompt => text + ASSISTANT,
        Part::Completion => match text.strip_prefix(ASSISTANT) {
            Some(rest) => rest.to_string(),
            None => text,
        },
    })
}

/// The prompt and the two responses of a preference pair given as two whole conversations
/// (TRL's implicit prompt, conversational): the leading messages both share are the prompt, the
/// rest of each its response; `None` when they share none.
pub fn split_shared_turns(
    chosen: &[Value],
    rejected: &[Value],
    fields: (&str, &str),
    at: RowAt,
) -> Result<Option<(String, String, String)>, DataError> {
    let shared = chosen.iter().zip(rejected).take_while(|(a, b)| a == b).count();
    if shared == 0 || shared == chosen.len() || shared == rejected.len() {
        return Ok(None);
    }
    Ok(Some((
        render(&chosen[..shared], fields.0, Part::Prompt, at)?,
        render(&chosen[shared..], fields.0, Part::Completion, at)?,
        render(&rejected[shared..], fields.1, Part::Completion, at)?,
    )))
}

/// `user` → `User`; a role is capitalised, whatever it is.
fn role_name(role: &str) -> String {
    let mut chars = role.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
