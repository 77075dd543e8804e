//! Constrained decoding: the answer can only be what the request allows. Tool calls are
//! `[TOOL_CALLS]name[ARGS]{json}` with a declared name and arguments valid against that
//! tool's JSON Schema; `response_format` makes the text JSON (valid against a schema);
//! `tool_choice: none` and requests without tools can never sample `[TOOL_CALLS]`.
//!
//! The grammar is llguidance's (the engine llama.cpp, vLLM and SGLang use): a Lark grammar
//! with the control tokens as token ids (looked up by name in the model's own table) and
//! `%json` for each schema. [`Grammars`] is built once per model (the token trie);
//! [`Grammars::compile`] makes a request's [`Constraint`] once, when the request is
//! admitted, so an unsupported schema is refused before anything runs (a vocabulary
//! without the tool-call tokens is not refused then: a cloud route can still serve it). In the engine,
//! [`Constraint::mask`] sets the logits of forbidden tokens to -inf before the sampler's
//! chain (penalties, top-k/p, temperature, the seeded draw: all unchanged), and
//! [`Constraint::accept`] advances the grammar by the sampled token.

mod rules;
mod vocab_env;

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::TokEnv;
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

pub use rules::{
    Function, MAX_TOOLS, OutputRules, ResponseFormat, ToolChoice, functions, parse_tools,
};
pub use vocab_env::VocabEnv;

use crate::tokenizer::Tokenizer;

/// Why a request's output rules cannot be enforced.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    /// A schema llguidance cannot compile (an unsupported keyword, an unsatisfiable
    /// schema); `field` names where it came from.
    #[error("{field}: {message}")]
    Schema { field: String, message: String },
    /// The model's vocabulary lacks a control token the tool-call format needs.
    #[error("this model's vocabulary has no {0} control token, so it cannot call tools")]
    MissingControl(&'static str),
    /// The grammar failed while generating (a bug, or a grammar too ambiguous to follow).
    #[error("constrained decoding failed: {0}")]
    Failed(String),
}

/// The control tokens of the tool-call format, by id in this model's table.
#[derive(Clone, Copy, Debug)]
struct Controls {
    tool_calls: Option<u32>,
    args: Option<u32>,
}

/// Compiles requests' grammars for one model.
pub struct Grammars {
    factory: ParserFactory,
    controls: Controls,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars")
            .field("controls", &self.controls)
            .finish_non_exhaustive()
    }
}

/// JSON the way the model was trained to write it (Python's `json.dumps`: `", "` and
/// `": "`, no other whitespace): fewer tokens, and no run of whitespace a weak model can
/// get lost in.
fn json_options() -> Value {
    serde_json::json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
    })
}

impl Grammars {
    /// The token trie and parser factory of `tokenizer`'s vocabulary.
    pub fn new(tokenizer: Arc<Tokenizer>) -> Result<Grammars, ConstraintError> {
        let controls = Controls {
            tool_calls: tokenizer.control_id("[TOOL_CALLS]"),
            args: tokenizer.control_id("[ARGS]"),
        };
        let env: TokEnv = Arc::new(VocabEnv::new(tokenizer));
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| ConstraintError::Failed(e.to_string()))?;
        factory.quiet();
        Ok(Grammars { factory, controls })
    }

    /// The constraint that enforces `rules` over the declared `tools` (checked by
    /// [`parse_tools`]); every schema is compiled now.
    pub fn compile(
        &self,
        tools: &[Value],
        rules: &OutputRules,
    ) -> Result<Constraint, ConstraintError> {
        let mut banned = Vec::new();
        if !rules.calls_allowed(tools) {
            banned.extend(self.controls.tool_calls);
            banned.extend(self.controls.args);
        }
        if rules.is_plain(tools) {
            return Ok(Constraint {
                matcher: None,
                banned,
                unusable: None,
            });
        }
        let lark = match self.lark(tools, rules) {
            Ok(lark) => lark,
            // Not a fault of the request: a cloud route can still call its tools. Here, it
            // fails when it runs.
            Err(e @ ConstraintError::MissingControl(_)) => {
                return Ok(Constraint {
                    matcher: None,
                    banned,
                    unusable: Some(e),
                });
            }
            Err(e) => return Err(e),
        };
        let matcher = self.matcher(&lark);
        if let Some(message) = matcher.get_error().map(|m| without_position(&m)) {
            // Find the schema at fault, to name it; else report the whole grammar.
            return Err(self.blame(tools, rules).unwrap_or(ConstraintError::Schema {
                field: "tools".into(),
                message,
            }));
        }
        Ok(Constraint {
            matcher: Some(matcher),
            banned,
            unusable: None,
        })
    }

    fn matcher(&self, lark: &str) -> Matcher {
        Matcher::new(
            self.factory
                .create_parser(TopLevelGrammar::from_lark(lark.to_owned())),
        )
    }

    /// The Lark grammar of `rules` (which are not plain).
    fn lark(&self, tools: &[Value], rules: &OutputRules) -> Result<String, ConstraintError> {
        let mut g = String::new();
        let text = match &rules.response_format {
            ResponseFormat::Text => "TEXT".to_owned(),
            ResponseFormat::JsonObject => json_rule(&serde_json::json!({"type": "object"})),
            ResponseFormat::JsonSchema { schema, .. } => json_rule(schema),
        };
        let body = if rules.calls_allowed(tools) {
            let tc = self
                .controls
                .tool_calls
                .ok_or(ConstraintError::MissingControl("[TOOL_CALLS]"))?;
            let args = self
                .controls
                .args
                .ok_or(ConstraintError::MissingControl("[ARGS]"))?;
            let functions = functions(tools);
            let mut alternatives = Vec::new();
            for (i, f) in functions.iter().enumerate() {
                // Names are checked to be [A-Za-z0-9_-]: a plain Lark string.
                g.push_str(&format!(
                    "fn_{i}: \"{}\" <[{args}]> {}\n",
                    f.name,
                    json_rule(&f.parameters)
                ));
                alternatives.push(format!("fn_{i}"));
            }
            let call = match &rules.tool_choice {
                ToolChoice::Function(name) => {
                    let i = functions
                        .iter()
                        .position(|f| f.name == name)
                        .ok_or_else(|| ConstraintError::Schema {
                            field: "tool_choice".into(),
                            message: format!("{name:?} is not a declared tool"),
                        })?;
                    format!("fn_{i}")
                }
                _ => alternatives.join(" | "),
            };
            g.push_str(&format!("call: <[{tc}]> ({call})\n"));
            let calls = match (&rules.tool_choice, rules.parallel_tool_calls) {
                (ToolChoice::Function(_), _) | (_, false) => "call",
                (_, true) => "call+",
            };
            match rules.tool_choice {
                ToolChoice::Auto => format!("{text} | {calls}"),
                _ => calls.to_owned(),
            }
        } else {
            text
        };
        // No `[THINK]` here: a constrained answer starts with what it must be (a model
        // that may think first may also think until the token limit, and never answer).
        g.push_str(&format!("start: {body}\n"));
        g.push_str("TEXT: /(?s:.*)/\n");
        Ok(g)
    }

    /// Compiles each schema alone, to name the one that fails.
    fn blame(&self, tools: &[Value], rules: &OutputRules) -> Option<ConstraintError> {
        let fails = |schema: &Value| {
            self.matcher(&format!("start: {}\n", json_rule(schema)))
                .get_error()
                .map(|m| without_position(&m))
        };
        if let ResponseFormat::JsonSchema { schema, .. } = &rules.response_format
            && let Some(message) = fails(schema)
        {
            return Some(ConstraintError::Schema {
                field: "response_format.json_schema.schema".into(),
                message,
            });
        }
        functions(tools).iter().enumerate().find_map(|(i, f)| {
            fails(&f.parameters).map(|message| ConstraintError::Schema {
                field: format!("tools[{i}].function.parameters"),
                message,
            })
        })
    }
}

/// An llguidance error without its position in our generated grammar (`at 1(8): `), which
/// means nothing to the client.
fn without_position(message: &str) -> String {
    // Later lines quote our grammar's source, with our layout options: not the client's.
    let message = message.lines().next().unwrap_or_default();
    match message
        .strip_prefix("at ")
        .and_then(|m| m.split_once("): "))
    {
        Some((pos, rest)) if pos.bytes().all(|b| b.is_ascii_digit() || b == b'(') => rest.into(),
        _ => message.into(),
    }
}

/// `%json {...}`: `schema` with our JSON layout options (a client's own `x-guidance`
/// options are replaced: they are llguidance's, not part of JSON Schema).
fn json_rule(schema: &Value) -> String {
    let mut schema = schema.clone();
    if let Value::Object(o) = &mut schema {
        o.insert("x-guidance".into(), json_options());
    }
    format!("%json {schema}")
}

/// One request's grammar state: which tokens may come next.
#[derive(Clone)]
pub struct Constraint {
    /// `None`: free text (only `banned` applies).
    matcher: Option<Matcher>,
    /// Control tokens that can never be sampled (`[TOOL_CALLS]` when no call is allowed).
    banned: Vec<u32>,
    /// Why this model cannot produce the answer asked for (its vocabulary lacks the
    /// tool-call tokens): the first [`Constraint::mask`] says so.
    unusable: Option<ConstraintError>,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("grammar", &self.matcher.is_some())
            .field("banned", &self.banned)
            .field("unusable", &self.unusable)
            .finish()
    }
}

impl Constraint {
    /// No constraint at all.
    pub fn none() -> Constraint {
        Constraint {
            matcher: None,
            banned: Vec::new(),
            unusable: None,
        }
    }

    /// Whether a grammar is followed (not just banned tokens).
    pub fn has_grammar(&self) -> bool {
        self.matcher.is_some()
    }

    /// Sets the logits of every token the grammar forbids next to -inf. The mask comes
    /// from llguidance (one bit per token); applying it allocates nothing.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        if let Some(e) = &self.unusable {
            return Err(e.clone());
        }
        for &id in &self.banned {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        let Some(m) = &mut self.matcher else {
            return Ok(());
        };
        let mask = m
            .compute_mask_or_eos()
            .map_err(|e| ConstraintError::Failed(e.to_string()))?;
        let words = mask.as_slice();
        let mut allowed = false;
        for (w, chunk) in logits.chunks_mut(32).enumerate() {
            let bits = words.get(w).copied().unwrap_or(0);
            if bits == u32::MAX && chunk.len() == 32 {
                allowed = true;
                continue;
            }
            for (b, l) in chunk.iter_mut().enumerate() {
                if bits >> b & 1 == 0 {
                    *l = f32::NEG_INFINITY;
                } else {
                    allowed |= *l > f32::NEG_INFINITY;
                }
            }
        }
        if !allowed {
            return Err(ConstraintError::Failed(
                "the grammar allows no token the model can produce".into(),
            ));
        }
        Ok(())
    }

    /// Advances the grammar by the sampled token (the end-of-sequence token included).
    pub fn accept(&mut self, id: u32) -> Result<(), ConstraintError> {
        match &mut self.matcher {
            Some(m) if !m.is_stopped() => m
                .consume_token(id)
                .map_err(|e| ConstraintError::Failed(e.to_string())),
            _ => Ok(()),
        }
    }
}
