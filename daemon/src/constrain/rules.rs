//! What a request asks of the shape of its answer, in OpenAI's terms: the declared tools,
//! `tool_choice`, `parallel_tool_calls` and `response_format`, parsed from their JSON and
//! checked (names, duplicates, a named tool that exists). Transport-neutral: the MQTT
//! schema and the HTTP front end both parse them here, and a cloud route sends them on as
//! they were given.

use serde_json::Value;

/// Most tools one request may declare.
pub const MAX_TOOLS: usize = 128;
/// Longest tool name (OpenAI's limit).
const MAX_TOOL_NAME: usize = 64;

/// Whether and how the answer calls tools.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// Text, or calls of the declared tools (the default when tools are declared).
    #[default]
    Auto,
    /// Never a call: `[TOOL_CALLS]` cannot be sampled.
    None,
    /// At least one call of a declared tool, and nothing else.
    Required,
    /// Exactly one call of this tool.
    Function(String),
}

/// The form of the answer's text.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ResponseFormat {
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against `schema`.
    JsonSchema {
        name: Option<String>,
        schema: Value,
        strict: bool,
    },
}

/// What a request asks of its answer's shape, besides the tools it declares (those are
/// part of the prompt: [`crate::tokenizer::ChatPrompt::tools`]).
#[derive(Clone, Debug, PartialEq)]
pub struct OutputRules {
    pub tool_choice: ToolChoice,
    pub parallel_tool_calls: bool,
    pub response_format: ResponseFormat,
}

impl Default for OutputRules {
    fn default() -> Self {
        OutputRules {
            tool_choice: ToolChoice::Auto,
            parallel_tool_calls: true,
            response_format: ResponseFormat::Text,
        }
    }
}

/// A declared function: its name and the JSON Schema of its arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct Function<'a> {
    pub name: &'a str,
    pub parameters: Value,
}

/// Checks tool definitions (`{"type": "function", "function": {"name", "description",
/// "parameters"}}`): the form, names of `[A-Za-z0-9_-]`, no name twice.
pub fn parse_tools(tools: Option<&Value>) -> Result<Vec<Value>, String> {
    let tools = match tools {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(t)) => t.clone(),
        Some(_) => return Err("tools must be an array".into()),
    };
    if tools.len() > MAX_TOOLS {
        return Err(format!("tools: at most {MAX_TOOLS} tools"));
    }
    let mut names: Vec<&str> = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let name = check_tool(t).map_err(|e| format!("tools[{i}]: {e}"))?;
        if names.contains(&name) {
            return Err(format!("tools[{i}]: the name {name:?} is declared twice"));
        }
        names.push(name);
    }
    Ok(tools)
}

/// The functions of checked tool definitions ([`parse_tools`]).
pub fn functions(tools: &[Value]) -> Vec<Function<'_>> {
    tools
        .iter()
        .filter_map(|t| {
            let f = t.get("function")?;
            Some(Function {
                name: f.get("name")?.as_str()?,
                parameters: match f.get("parameters") {
                    Some(p) if p.is_object() => p.clone(),
                    _ => serde_json::json!({"type": "object"}),
                },
            })
        })
        .collect()
}

impl OutputRules {
    /// Whether the answer is free text with no tool calls (nothing to constrain).
    pub fn is_plain(&self, tools: &[Value]) -> bool {
        (tools.is_empty() || self.tool_choice == ToolChoice::None)
            && self.response_format == ResponseFormat::Text
    }

    /// Whether a tool call may be made.
    pub fn calls_allowed(&self, tools: &[Value]) -> bool {
        !tools.is_empty() && self.tool_choice != ToolChoice::None
    }

    /// The values the client gave, in OpenAI's JSON form, checked against the declared
    /// `tools` ([`parse_tools`]). Each argument is the request's field as given (`None`
    /// when absent).
    pub fn parse(
        tools: &[Value],
        tool_choice: Option<&Value>,
        parallel_tool_calls: Option<&Value>,
        response_format: Option<&Value>,
    ) -> Result<OutputRules, String> {
        let names: Vec<&str> = functions(tools).iter().map(|f| f.name).collect();
        let tool_choice = match tool_choice {
            None | Some(Value::Null) => ToolChoice::Auto,
            Some(Value::String(s)) => match s.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                // Mistral's API names `required` `any`.
                "required" | "any" => ToolChoice::Required,
                other => {
                    return Err(format!(
                        "tool_choice {other:?} is not auto, none, required or a function"
                    ));
                }
            },
            Some(v @ Value::Object(_)) => {
                let name = v
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .ok_or("tool_choice: expected {\"type\": \"function\", \"function\": {\"name\": ...}}")?;
                ToolChoice::Function(name.to_owned())
            }
            Some(_) => return Err("tool_choice must be a string or an object".into()),
        };
        match &tool_choice {
            ToolChoice::Required if tools.is_empty() => {
                return Err("tool_choice is required but no tools are declared".into());
            }
            ToolChoice::Function(name) if !names.contains(&name.as_str()) => {
                return Err(format!(
                    "tool_choice names the function {name:?}, which tools does not declare"
                ));
            }
            _ => {}
        }
        let parallel_tool_calls = match parallel_tool_calls {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err("parallel_tool_calls must be true or false".into()),
        };
        let response_format = match response_format {
            None | Some(Value::Null) => ResponseFormat::Text,
            Some(v) => parse_response_format(v)?,
        };
        Ok(OutputRules {
            tool_choice,
            parallel_tool_calls,
            response_format,
        })
    }

    /// `tool_choice` in OpenAI's JSON form, to send on to a cloud route.
    pub fn tool_choice_json(&self) -> Value {
        match &self.tool_choice {
            ToolChoice::Auto => "auto".into(),
            ToolChoice::None => "none".into(),
            ToolChoice::Required => "required".into(),
            ToolChoice::Function(name) => {
                serde_json::json!({"type": "function", "function": {"name": name}})
            }
        }
    }

    /// `response_format` in OpenAI's JSON form (`None` for text).
    pub fn response_format_json(&self) -> Option<Value> {
        match &self.response_format {
            ResponseFormat::Text => None,
            ResponseFormat::JsonObject => Some(serde_json::json!({"type": "json_object"})),
            ResponseFormat::JsonSchema {
                name,
                schema,
                strict,
            } => {
                let mut js = serde_json::json!({"schema": schema, "strict": strict});
                if let Some(n) = name {
                    js["name"] = n.clone().into();
                }
                Some(serde_json::json!({"type": "json_schema", "json_schema": js}))
            }
        }
    }
}

/// Checks one tool definition; returns its name.
fn check_tool(t: &Value) -> Result<&str, String> {
    match t.get("type").and_then(Value::as_str) {
        Some("function") => {}
        Some(other) => return Err(format!("type {other:?} is not supported (only function)")),
        None => return Err("expected {\"type\": \"function\", \"function\": {...}}".into()),
    }
    let f = t
        .get("function")
        .filter(|f| f.is_object())
        .ok_or("\"function\" is missing or not an object")?;
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or("function.name is missing or not a string")?;
    if name.is_empty()
        || name.len() > MAX_TOOL_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "function.name {name:?} must be 1 to {MAX_TOOL_NAME} of a-z, A-Z, 0-9, _ and -"
        ));
    }
    match f.get("parameters") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(_) => return Err("function.parameters must be a JSON Schema object".into()),
    }
    if let Some(d) = f.get("description")
        && !d.is_string()
    {
        return Err("function.description must be a string".into());
    }
    Ok(name)
}

fn parse_response_format(v: &Value) -> Result<ResponseFormat, String> {
    let kind = v.get("type").and_then(Value::as_str).ok_or(
        "response_format: expected {\"type\": \"text\" | \"json_object\" | \"json_schema\"}",
    )?;
    match kind {
        "text" => Ok(ResponseFormat::Text),
        "json_object" => Ok(ResponseFormat::JsonObject),
        "json_schema" => {
            let js = v
                .get("json_schema")
                .filter(|j| j.is_object())
                .ok_or("response_format.json_schema is missing or not an object")?;
            let schema = match js.get("schema") {
                Some(s @ Value::Object(_)) => s.clone(),
                // OpenAI allows a schema-less json_schema: any JSON.
                None | Some(Value::Null) => serde_json::json!({}),
                Some(_) => {
                    return Err("response_format.json_schema.schema must be an object".into());
                }
            };
            let strict = match js.get("strict") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err("response_format.json_schema.strict must be true or false".into());
                }
            };
            let name = js.get("name").and_then(Value::as_str).map(str::to_owned);
            Ok(ResponseFormat::JsonSchema {
                name,
                schema,
                strict,
            })
        }
        other => Err(format!(
            "response_format.type {other:?} is not text, json_object or json_schema"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(name: &str) -> Value {
        json!({"type": "function", "function": {"name": name, "parameters": {"type": "object"}}})
    }

    #[test]
    fn parses_openai_fields() {
        let tools = parse_tools(Some(&json!([tool("turn_on"), tool("turn_off")]))).unwrap();
        let r = OutputRules::parse(
            &tools,
            Some(&json!({"type": "function", "function": {"name": "turn_off"}})),
            Some(&json!(false)),
            Some(&json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": true}})),
        )
        .unwrap();
        assert_eq!(r.tool_choice, ToolChoice::Function("turn_off".into()));
        assert!(!r.parallel_tool_calls);
        assert!(matches!(
            r.response_format,
            ResponseFormat::JsonSchema { strict: true, .. }
        ));
        assert_eq!(functions(&tools).len(), 2);
        assert_eq!(r.tool_choice_json()["function"]["name"], "turn_off");
        assert_eq!(
            r.response_format_json().unwrap()["json_schema"]["name"],
            "x"
        );
        let plain = OutputRules::parse(&[], None, None, None).unwrap();
        assert!(plain.is_plain(&[]) && !plain.is_plain(&tools) && plain.parallel_tool_calls);
        assert_eq!(plain.response_format_json(), None);
    }

    #[test]
    fn refusals_name_the_field() {
        let tools = [tool("turn_on")];
        let err = |t: &[Value], c: Option<&Value>, f: Option<&Value>| {
            OutputRules::parse(t, c, None, f).unwrap_err()
        };
        let tools_err = |t: Value| parse_tools(Some(&t)).unwrap_err();
        assert!(tools_err(json!([tool("a"), tool("a")])).contains("declared twice"));
        assert!(tools_err(json!([tool("bad name")])).contains("function.name"));
        assert!(tools_err(json!([{"type": "retrieval"}])).contains("tools[0]"));
        assert!(tools_err(json!({"a": 1})).contains("array"));
        let many = Value::Array((0..=MAX_TOOLS).map(|i| tool(&format!("t{i}"))).collect());
        assert!(tools_err(many).contains("at most"));
        assert!(err(&[], Some(&json!("required")), None).contains("no tools"));
        assert!(
            err(
                &tools,
                Some(&json!({"type": "function", "function": {"name": "x"}})),
                None
            )
            .contains("\"x\"")
        );
        assert!(err(&tools, Some(&json!("sometimes")), None).contains("tool_choice"));
        assert!(err(&[], None, Some(&json!({"type": "yaml"}))).contains("response_format.type"));
    }
}
