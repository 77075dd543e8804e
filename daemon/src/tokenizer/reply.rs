//! The assistant's reply read back from the chat format as it is generated: text,
//! reasoning between `[THINK]` and `[/THINK]`, and tool calls written
//! `[TOOL_CALLS]name[ARGS]{json}` (one or several, ended by `</s>`).
//!
//! The structure comes only from control token ids, which text cannot produce: a user who
//! writes `[TOOL_CALLS]` in a message, or a model that prints those characters, makes text.
//! [`ReplyParser`] hands out [`ReplyPiece`]s as they become known (a call's name once its
//! `[ARGS]` arrives, then its arguments in pieces), the way OpenAI streams deltas, and
//! collects the whole [`AssistantReply`]. Call ids are 9 alphanumerics, as Mistral's API
//! makes them, drawn from the request's seed so that a rerun gives the same ids.

use crate::rng::SplitMix64;

use super::Tokenizer;

/// A tool call the model made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedCall {
    pub id: String,
    pub name: String,
    /// The arguments as generated (JSON text; OpenAI's `arguments` is this string).
    pub arguments: String,
}

/// The whole reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AssistantReply {
    pub content: String,
    /// `[THINK]...[/THINK]`: OpenAI-compatible servers' `reasoning_content`.
    pub reasoning: String,
    pub tool_calls: Vec<GeneratedCall>,
}

/// A piece of the reply, as it streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyPiece<'a> {
    Content(&'a str),
    Reasoning(&'a str),
    /// A call begins: its index in the reply's calls, id and name.
    CallStart {
        index: usize,
        id: &'a str,
        name: &'a str,
    },
    /// More of call `index`'s arguments.
    CallArguments {
        index: usize,
        text: &'a str,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Content,
    Think,
    /// Between `[TOOL_CALLS]` and `[ARGS]`.
    Name,
    Arguments,
}

/// The control ids that give a reply its structure, looked up by name.
#[derive(Clone, Copy, Debug)]
struct Controls {
    tool_calls: Option<u32>,
    args: Option<u32>,
    think: Option<u32>,
    end_think: Option<u32>,
}

/// Reads one reply; see the module documentation.
#[derive(Debug)]
pub struct ReplyParser {
    controls: Controls,
    state: State,
    reply: AssistantReply,
    /// The name of the call being read (before its `[ARGS]`).
    name: String,
    ids: SplitMix64,
}

/// Characters of call ids.
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
/// Length of call ids (Mistral's API's).
pub const CALL_ID_LEN: usize = 9;

impl ReplyParser {
    /// A parser for `tok`'s control tokens; call ids come from `seed`.
    pub fn new(tok: &Tokenizer, seed: u64) -> ReplyParser {
        ReplyParser {
            controls: Controls {
                tool_calls: tok.control_id("[TOOL_CALLS]"),
                args: tok.control_id("[ARGS]"),
                think: tok.control_id("[THINK]"),
                end_think: tok.control_id("[/THINK]"),
            },
            state: State::Content,
            reply: AssistantReply::default(),
            name: String::new(),
            // Not the sampler's stream: the ids must not depend on how many draws it made.
            ids: SplitMix64::new(seed ^ 0x6361_6c6c_5f69_6473),
        }
    }

    /// Takes one generated token (`id`, `None` for text released at the end) and the text
    /// it released; `emit` gets what became known.
    pub fn push(&mut self, id: Option<u32>, text: &str, emit: &mut impl FnMut(ReplyPiece<'_>)) {
        if let Some(id) = id {
            let c = self.controls;
            if Some(id) == c.tool_calls {
                self.end_name(emit);
                self.state = State::Name;
            } else if Some(id) == c.args && self.state == State::Name {
                self.start_call(emit);
                self.state = State::Arguments;
            } else if Some(id) == c.think && self.state == State::Content {
                self.state = State::Think;
            } else if Some(id) == c.end_think && self.state == State::Think {
                self.state = State::Content;
            }
        }
        if text.is_empty() {
            return;
        }
        match self.state {
            State::Content => {
                self.reply.content.push_str(text);
                emit(ReplyPiece::Content(text));
            }
            State::Think => {
                self.reply.reasoning.push_str(text);
                emit(ReplyPiece::Reasoning(text));
            }
            State::Name => self.name.push_str(text),
            State::Arguments => {
                let index = self.reply.tool_calls.len() - 1;
                self.reply.tool_calls[index].arguments.push_str(text);
                emit(ReplyPiece::CallArguments { index, text });
            }
        }
    }

    /// The reply, once generation has ended. A call cut off before its `[ARGS]` (the token
    /// limit) is kept, with empty arguments.
    pub fn finish(mut self, emit: &mut impl FnMut(ReplyPiece<'_>)) -> AssistantReply {
        self.end_name(emit);
        self.reply
    }

    /// The reply so far.
    pub fn reply(&self) -> &AssistantReply {
        &self.reply
    }

    fn end_name(&mut self, emit: &mut impl FnMut(ReplyPiece<'_>)) {
        if self.state == State::Name {
            self.start_call(emit);
            self.state = State::Arguments;
        }
    }

    fn start_call(&mut self, emit: &mut impl FnMut(ReplyPiece<'_>)) {
        let id: String = (0..CALL_ID_LEN)
            .map(|_| ID_ALPHABET[(self.ids.next_u64() % ID_ALPHABET.len() as u64) as usize] as char)
            .collect();
        self.reply.tool_calls.push(GeneratedCall {
            id,
            name: std::mem::take(&mut self.name).trim().to_owned(),
            arguments: String::new(),
        });
        let index = self.reply.tool_calls.len() - 1;
        let call = &self.reply.tool_calls[index];
        emit(ReplyPiece::CallStart {
            index,
            id: &call.id,
            name: &call.name,
        });
    }
}
