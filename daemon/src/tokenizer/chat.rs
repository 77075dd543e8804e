//! The Ministral 3 Instruct prompt format, built as ids:
//!
//! ```text
//! <s>[SYSTEM_PROMPT]system[/SYSTEM_PROMPT][INST]user[/INST]assistant</s>[INST]user 2[/INST]
//! ```
//!
//! The layout follows mistral-common's instruct tokenizer (v7 and later): an optional
//! system prompt between `[SYSTEM_PROMPT]` and `[/SYSTEM_PROMPT]`; user turns between
//! `[INST]` and `[/INST]`; assistant turns (trailing spaces removed) ended by `</s>`; tool
//! definitions as `[AVAILABLE_TOOLS]json[/AVAILABLE_TOOLS]` just before the `[INST]` of the
//! last user turn (or the first, see [`ToolsPosition`]); each assistant tool call as
//! `[TOOL_CALLS]name[ARGS]json`; each tool result as `[TOOL_RESULTS]content[/TOOL_RESULTS]`.
//! JSON is written the way Python's `json.dumps(..., ensure_ascii=False)` writes it, since
//! that is what the model saw in training.
//!
//! Message text is always encoded as plain text and control tokens are inserted as ids, so
//! no message content can forge a turn boundary. The format is fixed in code: a chat
//! template read from a model file is never executed.

use serde::Serialize as _;
use serde_json::Value;

use super::Tokenizer;

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// The system prompt (only as the first message).
    System(String),
    User(String),
    /// An assistant turn: text, tool calls, or both.
    Assistant {
        content: String,
        tool_calls: Vec<ToolCall>,
    },
    /// The result of a tool call. The call's id is not tokenized (the v13 format pairs
    /// results with calls by order); it is kept for a cloud route, whose API pairs them by
    /// id.
    Tool {
        content: String,
        call_id: Option<String>,
    },
}

impl Message {
    /// The role name, as in the JSON form.
    pub fn role(&self) -> &'static str {
        match self {
            Message::System(_) => "system",
            Message::User(_) => "user",
            Message::Assistant { .. } => "assistant",
            Message::Tool { .. } => "tool",
        }
    }
}

/// A function call made by the assistant.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    /// The call's id as the client gave it (not tokenized; kept for a cloud route).
    pub id: Option<String>,
    pub name: String,
    /// The arguments object (any JSON value).
    pub arguments: Value,
}

/// Where `[AVAILABLE_TOOLS]` goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ToolsPosition {
    /// Where the tokenizer's own format puts them ([`Tokenizer::tools_position`]).
    #[default]
    Tokenizer,
    /// Before the last user turn (mistral-common up to tokenizer v11).
    BeforeLastUser,
    /// Before the first user turn (mistral-common's tokenizer v13).
    BeforeFirstUser,
}

/// Why a conversation cannot be formatted.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("the conversation has no messages")]
    Empty,
    #[error("message {index}: a system message may only come first")]
    SystemNotFirst { index: usize },
    #[error(
        "message {index}: {} message cannot follow {after} (after the optional system \
         message, user and assistant turns alternate, starting with the user; tool results \
         follow an assistant's tool calls)",
        with_article(.role)
    )]
    Order {
        index: usize,
        role: &'static str,
        after: &'static str,
    },
    #[error("the conversation must end with a user message or tool results, not {0}")]
    End(&'static str),
    #[error("message {index}: {reason}")]
    Message { index: usize, reason: String },
    #[error("chat JSON: {0}")]
    Json(String),
    #[error("this vocabulary has no {0} control token")]
    MissingControl(&'static str),
}

fn with_article(role: &str) -> String {
    // The roles are system, user, assistant and tool.
    let article = if role == "assistant" { "an" } else { "a" };
    format!("{article} {role}")
}

/// A conversation to format. Build it with the methods, or parse the JSON form with
/// [`ChatPrompt::from_json`], then [`ChatPrompt::encode`] it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatPrompt {
    pub messages: Vec<Message>,
    /// Tool definitions, e.g. `{"type": "function", "function": {"name", "description",
    /// "parameters"}}`, written as given.
    pub tools: Vec<Value>,
    pub tools_position: ToolsPosition,
}

impl ChatPrompt {
    pub fn new() -> ChatPrompt {
        ChatPrompt::default()
    }

    pub fn system(mut self, text: impl Into<String>) -> ChatPrompt {
        self.messages.push(Message::System(text.into()));
        self
    }

    pub fn user(mut self, text: impl Into<String>) -> ChatPrompt {
        self.messages.push(Message::User(text.into()));
        self
    }

    pub fn assistant(mut self, text: impl Into<String>) -> ChatPrompt {
        self.messages.push(Message::Assistant {
            content: text.into(),
            tool_calls: Vec::new(),
        });
        self
    }

    /// An assistant turn that calls tools (with optional text before the calls).
    pub fn assistant_tool_calls(
        mut self,
        text: impl Into<String>,
        calls: impl IntoIterator<Item = ToolCall>,
    ) -> ChatPrompt {
        self.messages.push(Message::Assistant {
            content: text.into(),
            tool_calls: calls.into_iter().collect(),
        });
        self
    }

    pub fn tool_result(mut self, content: impl Into<String>) -> ChatPrompt {
        self.messages.push(Message::Tool {
            content: content.into(),
            call_id: None,
        });
        self
    }

    pub fn tools(mut self, tools: impl IntoIterator<Item = Value>) -> ChatPrompt {
        self.tools = tools.into_iter().collect();
        self
    }

    pub fn tools_position(mut self, position: ToolsPosition) -> ChatPrompt {
        self.tools_position = position;
        self
    }

    /// Parses the JSON form: an array of messages, or `{"messages": [...], "tools": [...]}`.
    /// A message is `{"role": "system"|"user"|"assistant"|"tool", "content": "..."}`; an
    /// assistant message may have `"tool_calls": [{"name", "arguments"}]` (or OpenAI's
    /// `{"function": {"name", "arguments"}}`), with arguments as JSON or a JSON string.
    pub fn from_json(text: &str) -> Result<ChatPrompt, ChatError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| ChatError::Json(e.to_string()))?;
        let (messages, tools) = match value {
            Value::Array(messages) => (messages, Vec::new()),
            Value::Object(mut obj) => {
                let messages = match obj.remove("messages") {
                    Some(Value::Array(m)) => m,
                    _ => {
                        return Err(ChatError::Json(
                            "expected \"messages\": an array of messages".into(),
                        ));
                    }
                };
                let tools = match obj.remove("tools") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(t)) => t,
                    Some(_) => return Err(ChatError::Json("\"tools\" must be an array".into())),
                };
                (messages, tools)
            }
            _ => {
                return Err(ChatError::Json(
                    "expected an array of messages or an object with \"messages\"".into(),
                ));
            }
        };
        Ok(ChatPrompt::from_messages(&messages)?.tools(tools))
    }

    /// Messages in their JSON form (see [`ChatPrompt::from_json`]), without tools.
    pub fn from_messages(messages: &[Value]) -> Result<ChatPrompt, ChatError> {
        let messages = messages
            .iter()
            .enumerate()
            .map(|(index, m)| message_from_json(index, m))
            .collect::<Result<_, _>>()?;
        Ok(ChatPrompt {
            messages,
            tools: Vec::new(),
            tools_position: ToolsPosition::default(),
        })
    }

    /// Checks the order of the turns (see [`ChatError`]).
    pub fn validate(&self) -> Result<(), ChatError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Prev {
            Start,
            System,
            User,
            Assistant,
            AssistantCalls,
            Tool,
        }
        let name = |p: Prev| match p {
            Prev::Start => "the start",
            Prev::System => "the system message",
            Prev::User => "a user message",
            Prev::Assistant => "an assistant message",
            Prev::AssistantCalls => "an assistant's tool calls",
            Prev::Tool => "a tool result",
        };
        let mut prev = Prev::Start;
        for (index, m) in self.messages.iter().enumerate() {
            let next = match m {
                Message::System(_) if prev == Prev::Start => Prev::System,
                Message::System(_) => return Err(ChatError::SystemNotFirst { index }),
                Message::User(_)
                    if matches!(prev, Prev::Start | Prev::System | Prev::Assistant) =>
                {
                    Prev::User
                }
                Message::Assistant {
                    content,
                    tool_calls,
                } if matches!(prev, Prev::User | Prev::Tool) => {
                    if content.trim_end_matches(' ').is_empty() && tool_calls.is_empty() {
                        return Err(ChatError::Message {
                            index,
                            reason: "an assistant message needs content or tool calls".into(),
                        });
                    }
                    if tool_calls.is_empty() {
                        Prev::Assistant
                    } else {
                        Prev::AssistantCalls
                    }
                }
                Message::Tool { .. } if matches!(prev, Prev::AssistantCalls | Prev::Tool) => {
                    Prev::Tool
                }
                _ => {
                    return Err(ChatError::Order {
                        index,
                        role: m.role(),
                        after: name(prev),
                    });
                }
            };
            prev = next;
        }
        match prev {
            Prev::User | Prev::Tool => Ok(()),
            Prev::Start => Err(ChatError::Empty),
            Prev::System => Err(ChatError::End("only a system message")),
            Prev::Assistant | Prev::AssistantCalls => Err(ChatError::End("an assistant message")),
        }
    }

    /// The prompt's ids, starting with BOS and ending where the model continues.
    pub fn encode(&self, tok: &Tokenizer) -> Result<Vec<u32>, ChatError> {
        self.validate()?;
        let ctl = |name: &'static str| tok.control_id(name).ok_or(ChatError::MissingControl(name));
        let tools_at = if self.tools.is_empty() {
            None
        } else {
            let mut users = self
                .messages
                .iter()
                .enumerate()
                .filter(|(_, m)| matches!(m, Message::User(_)))
                .map(|(i, _)| i);
            let position = match self.tools_position {
                ToolsPosition::Tokenizer => tok.tools_position(),
                given => given,
            };
            match position {
                ToolsPosition::BeforeFirstUser => users.next(),
                ToolsPosition::BeforeLastUser | ToolsPosition::Tokenizer => users.next_back(),
            }
        };

        let mut ids = vec![tok.bos_id()];
        for (index, m) in self.messages.iter().enumerate() {
            match m {
                Message::System(text) => {
                    ids.push(ctl("[SYSTEM_PROMPT]")?);
                    tok.encode_into(text, &mut ids);
                    ids.push(ctl("[/SYSTEM_PROMPT]")?);
                }
                Message::User(text) => {
                    if tools_at == Some(index) {
                        ids.push(ctl("[AVAILABLE_TOOLS]")?);
                        tok.encode_into(&python_json(&Value::Array(self.tools.clone())), &mut ids);
                        ids.push(ctl("[/AVAILABLE_TOOLS]")?);
                    }
                    ids.push(ctl("[INST]")?);
                    tok.encode_into(text, &mut ids);
                    ids.push(ctl("[/INST]")?);
                }
                Message::Assistant {
                    content,
                    tool_calls,
                } => {
                    tok.encode_into(content.trim_end_matches(' '), &mut ids);
                    for call in tool_calls {
                        ids.push(ctl("[TOOL_CALLS]")?);
                        tok.encode_into(&call.name, &mut ids);
                        ids.push(ctl("[ARGS]")?);
                        tok.encode_into(&python_json(&call.arguments), &mut ids);
                    }
                    ids.push(tok.eos_id());
                }
                Message::Tool { content, .. } => {
                    ids.push(ctl("[TOOL_RESULTS]")?);
                    tok.encode_into(content, &mut ids);
                    ids.push(ctl("[/TOOL_RESULTS]")?);
                }
            }
        }
        Ok(ids)
    }
}

fn message_from_json(index: usize, v: &Value) -> Result<Message, ChatError> {
    let bad = |reason: String| ChatError::Message { index, reason };
    let obj = v
        .as_object()
        .ok_or_else(|| bad("expected an object with \"role\" and \"content\"".into()))?;
    let role = obj
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("\"role\" is missing or not a string".into()))?;
    let content = match obj.get("content") {
        Some(Value::String(s)) => Some(s.clone()),
        None | Some(Value::Null) => None,
        Some(_) => {
            return Err(bad(
                "\"content\" must be a string (structured content is not supported)".into(),
            ));
        }
    };
    let text = |content: Option<String>| {
        content.ok_or_else(|| bad(format!("a {role} message needs a \"content\" string")))
    };
    match role {
        "system" => Ok(Message::System(text(content)?)),
        "user" => Ok(Message::User(text(content)?)),
        "tool" => Ok(Message::Tool {
            content: text(content)?,
            call_id: match obj.get("tool_call_id") {
                None | Some(Value::Null) => None,
                Some(Value::String(id)) => Some(id.clone()),
                Some(_) => return Err(bad("\"tool_call_id\" must be a string".into())),
            },
        }),
        "assistant" => {
            let tool_calls = match obj.get("tool_calls") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(calls)) => calls
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        tool_call_from_json(c).map_err(|e| bad(format!("tool call {i}: {e}")))
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err(bad("\"tool_calls\" must be an array".into())),
            };
            Ok(Message::Assistant {
                content: content.unwrap_or_default(),
                tool_calls,
            })
        }
        other => Err(bad(format!(
            "unknown role {other:?} (expected system, user, assistant or tool)"
        ))),
    }
}

fn tool_call_from_json(v: &Value) -> Result<ToolCall, String> {
    // OpenAI nests the call in "function"; mistral-common's own form does not.
    let call = v.get("function").unwrap_or(v);
    let name = call
        .get("name")
        .and_then(Value::as_str)
        .ok_or("\"name\" is missing or not a string")?;
    let arguments = match call.get("arguments") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        // A string holding JSON is parsed, as mistral-common does; other strings stay text.
        Some(Value::String(s)) => {
            serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
        }
        Some(other) => other.clone(),
    };
    let id = match v.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => return Err("\"id\" must be a string".into()),
    };
    Ok(ToolCall {
        id,
        name: name.to_owned(),
        arguments,
    })
}

/// `json.dumps(value, ensure_ascii=False)`: `", "` between items, `": "` after keys,
/// non-ASCII characters as they are.
pub fn python_json(value: &Value) -> String {
    struct PythonFormatter;
    impl serde_json::ser::Formatter for PythonFormatter {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first { Ok(()) } else { w.write_all(b", ") }
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first { Ok(()) } else { w.write_all(b", ") }
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
        ) -> std::io::Result<()> {
            w.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    // Writing a `Value` into a Vec cannot fail, and serde_json writes valid UTF-8.
    if value.serialize(&mut ser).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_is_written_like_python() {
        let v = json!({"a": [1, 2.5, "é\n"], "b": {"c": null, "d": true}});
        assert_eq!(
            python_json(&v),
            r#"{"a": [1, 2.5, "é\n"], "b": {"c": null, "d": true}}"#
        );
        assert_eq!(python_json(&json!([])), "[]");
        assert_eq!(python_json(&json!({})), "{}");
    }

    #[test]
    fn order_rules() {
        let ok = ChatPrompt::new()
            .system("s")
            .user("u")
            .assistant("a")
            .user("u2");
        assert!(ok.validate().is_ok());
        let calls = ChatPrompt::new()
            .user("u")
            .assistant_tool_calls(
                "",
                [ToolCall {
                    id: None,
                    name: "f".into(),
                    arguments: json!({}),
                }],
            )
            .tool_result("r");
        assert!(calls.validate().is_ok());
        for (p, want) in [
            (ChatPrompt::new(), "no messages"),
            (ChatPrompt::new().assistant("a"), "cannot follow the start"),
            (
                ChatPrompt::new().user("u").user("v"),
                "cannot follow a user",
            ),
            (ChatPrompt::new().user("u").system("s"), "only come first"),
            (ChatPrompt::new().user("u").assistant("a"), "must end"),
            (
                ChatPrompt::new().user("u").tool_result("r"),
                "cannot follow a user",
            ),
            (ChatPrompt::new().user("u").assistant("  "), "needs content"),
        ] {
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
    }
}
