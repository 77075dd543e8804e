//! The cloud's answer put together from its chunks' deltas into the one shape every route
//! answers in: text, reasoning and tool calls ([`AssistantReply`]), handed out as they
//! arrive as [`ReplyPiece`]s, the pieces the local engine streams.
//!
//! OpenAI streams a call as a first delta with its `index`, `id` and `function.name` (and
//! empty arguments), then pieces of its arguments under the same index, several calls
//! interleaved by index. [`Assembler`] follows that, leniently where providers differ
//! (indices with gaps or missing, arguments before the name, a repeated name) and strictly
//! where the answer could not be represented or would grow without bound: at most
//! [`MAX_CALLS`] calls, names of at most [`MAX_NAME_LEN`] characters of `[A-Za-z0-9_.-]`,
//! ids of visible ASCII, a call that never got a name, and all the text together within
//! the response's size limit. A call without an id gets one made up like the local
//! engine's (9 alphanumerics).
//!
//! Everything the server wrote passes through the redactor before it is handed out: the
//! text, the reasoning and each call's arguments through a stream redactor of their own
//! (a token split across two deltas of one of them is still caught), names and ids, which
//! arrive whole, through an excerpt.

use super::openai::{CallDelta, MAX_MESSAGE_CHARS};
use super::redact::{Excerpt, Redactor, StreamRedactor};
use super::types::new_call_id;
use crate::rng::SplitMix64;
use crate::tokenizer::{AssistantReply, GeneratedCall, ReplyPiece};

/// Most tool calls one answer may make (as many as a request may declare tools).
pub(crate) const MAX_CALLS: usize = crate::constrain::MAX_TOOLS;
/// Longest call name (OpenAI's limit on function names).
pub(crate) const MAX_NAME_LEN: usize = 64;
/// Longest call id kept (OpenAI's are 29 characters, vLLM's 46).
pub(crate) const MAX_CALL_ID_LEN: usize = 128;

/// One call as the provider sends it.
struct Call<'r> {
    /// The provider's index, when it gave one.
    provider_index: Option<u64>,
    /// The provider's id (raw), until the call starts.
    id: Option<String>,
    /// The index in the reply's calls, once the name is known and the call handed out.
    ours: Option<usize>,
    /// Arguments received before the name (raw), handed out when the call starts.
    early: String,
    args: StreamRedactor<'r>,
}

/// Puts one answer together; see the module documentation.
pub(crate) struct Assembler<'r> {
    redactor: &'r Redactor,
    /// Bound on the raw text of the answer, all parts together.
    max_bytes: usize,
    bytes: usize,
    ids: SplitMix64,
    content: StreamRedactor<'r>,
    reasoning: StreamRedactor<'r>,
    calls: Vec<Call<'r>>,
    reply: AssistantReply,
    /// Something has been handed out (so the answer can no longer be retried).
    emitted: bool,
}

impl<'r> Assembler<'r> {
    /// An assembler whose answer may hold `max_bytes` of text, making call ids from `ids`.
    pub(crate) fn new(redactor: &'r Redactor, max_bytes: usize, ids: SplitMix64) -> Assembler<'r> {
        Assembler {
            redactor,
            max_bytes,
            bytes: 0,
            ids,
            content: redactor.stream(),
            reasoning: redactor.stream(),
            calls: Vec::new(),
            reply: AssistantReply::default(),
            emitted: false,
        }
    }

    /// Whether any piece has been handed out.
    pub(crate) fn emitted(&self) -> bool {
        self.emitted
    }

    fn refuse(&self, message: &str) -> Excerpt {
        self.redactor.excerpt(message, MAX_MESSAGE_CHARS)
    }

    fn count(&mut self, text: &str) -> Result<(), Excerpt> {
        self.bytes += text.len();
        if self.bytes > self.max_bytes {
            return Err(self.refuse(&format!("an answer larger than {} bytes", self.max_bytes)));
        }
        Ok(())
    }

    /// A piece of the answer's text.
    pub(crate) fn content(
        &mut self,
        text: &str,
        emit: &mut impl FnMut(ReplyPiece<'_>),
    ) -> Result<(), Excerpt> {
        self.count(text)?;
        let out = self.content.push(text);
        if !out.is_empty() {
            self.reply.content.push_str(&out);
            self.emitted = true;
            emit(ReplyPiece::Content(&out));
        }
        Ok(())
    }

    /// A piece of the answer's reasoning.
    pub(crate) fn reasoning(
        &mut self,
        text: &str,
        emit: &mut impl FnMut(ReplyPiece<'_>),
    ) -> Result<(), Excerpt> {
        self.count(text)?;
        let out = self.reasoning.push(text);
        if !out.is_empty() {
            self.reply.reasoning.push_str(&out);
            self.emitted = true;
            emit(ReplyPiece::Reasoning(&out));
        }
        Ok(())
    }

    /// A piece of a tool call.
    pub(crate) fn call(
        &mut self,
        delta: CallDelta,
        emit: &mut impl FnMut(ReplyPiece<'_>),
    ) -> Result<(), Excerpt> {
        for text in [&delta.id, &delta.name, &delta.arguments]
            .into_iter()
            .flatten()
        {
            self.count(text)?;
        }
        let at = self.find(&delta)?;
        if let Some(id) = delta.id {
            if id.len() > MAX_CALL_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
                let id = self.redactor.excerpt(&id, 40);
                return Err(self.refuse(&format!(
                    "a tool call id that is not at most {MAX_CALL_ID_LEN} visible ASCII \
                     characters: {:?}",
                    id.as_str()
                )));
            }
            // An id arriving after the call was handed out with a made-up one is too late
            // to use; the first one given is kept.
            self.calls[at].id.get_or_insert(id);
        }
        if let Some(name) = delta.name {
            self.name(at, name, emit)?;
        }
        if let Some(args) = delta.arguments {
            let call = &mut self.calls[at];
            match call.ours {
                None => call.early.push_str(&args),
                Some(ours) => {
                    let out = call.args.push(&args);
                    if !out.is_empty() {
                        self.reply.tool_calls[ours].arguments.push_str(&out);
                        self.emitted = true;
                        emit(ReplyPiece::CallArguments {
                            index: ours,
                            text: &out,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The call a delta belongs to, made when it is a new one.
    fn find(&mut self, delta: &CallDelta) -> Result<usize, Excerpt> {
        let found = match delta.index {
            Some(i) => self.calls.iter().position(|c| c.provider_index == Some(i)),
            // Without an index: the call with this id, else a new call when it names one,
            // else the last call.
            None => delta
                .id
                .as_ref()
                .and_then(|id| self.calls.iter().position(|c| c.id.as_ref() == Some(id)))
                .or_else(|| {
                    if delta.name.is_some() {
                        None
                    } else {
                        self.calls.len().checked_sub(1)
                    }
                }),
        };
        if let Some(at) = found {
            return Ok(at);
        }
        if self.calls.len() == MAX_CALLS {
            return Err(self.refuse(&format!("more than {MAX_CALLS} tool calls")));
        }
        self.calls.push(Call {
            provider_index: delta.index,
            id: None,
            ours: None,
            early: String::new(),
            args: self.redactor.stream(),
        });
        Ok(self.calls.len() - 1)
    }

    /// Call `at`'s name: the call is handed out (with the arguments that came before it).
    fn name(
        &mut self,
        at: usize,
        name: String,
        emit: &mut impl FnMut(ReplyPiece<'_>),
    ) -> Result<(), Excerpt> {
        if name.len() > MAX_NAME_LEN
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            let shown = self.redactor.excerpt(&name, MAX_NAME_LEN + 16);
            return Err(self.refuse(&format!(
                "a tool call name that is not at most {MAX_NAME_LEN} characters of \
                 [A-Za-z0-9_.-]: {:?}",
                shown.as_str()
            )));
        }
        let name = self.redactor.excerpt(&name, MAX_NAME_LEN).into_string();
        if let Some(ours) = self.calls[at].ours {
            // Some servers repeat the name in every delta of a call.
            if self.reply.tool_calls[ours].name == name {
                return Ok(());
            }
            return Err(self.refuse(&format!(
                "tool call {ours} renamed from {:?} to {name:?}",
                self.reply.tool_calls[ours].name
            )));
        }
        let id = match self.calls[at].id.take() {
            Some(id) => self.redactor.excerpt(&id, MAX_CALL_ID_LEN).into_string(),
            None => new_call_id(&mut self.ids),
        };
        let ours = self.reply.tool_calls.len();
        self.reply.tool_calls.push(GeneratedCall {
            id,
            name,
            arguments: String::new(),
        });
        let call = &mut self.calls[at];
        call.ours = Some(ours);
        self.emitted = true;
        let c = &self.reply.tool_calls[ours];
        emit(ReplyPiece::CallStart {
            index: ours,
            id: &c.id,
            name: &c.name,
        });
        let early = std::mem::take(&mut call.early);
        let out = call.args.push(&early);
        if !out.is_empty() {
            self.reply.tool_calls[ours].arguments.push_str(&out);
            emit(ReplyPiece::CallArguments {
                index: ours,
                text: &out,
            });
        }
        Ok(())
    }

    /// The end of the answer: what the redactors held back is handed out, and the whole
    /// answer returned. A call that never got a name is refused.
    pub(crate) fn finish(
        mut self,
        emit: &mut impl FnMut(ReplyPiece<'_>),
    ) -> Result<AssistantReply, Excerpt> {
        if self.calls.iter().any(|c| c.ours.is_none()) {
            return Err(self.refuse("a tool call without a function name"));
        }
        let rest = self.content.finish();
        if !rest.is_empty() {
            self.reply.content.push_str(&rest);
            emit(ReplyPiece::Content(&rest));
        }
        let rest = self.reasoning.finish();
        if !rest.is_empty() {
            self.reply.reasoning.push_str(&rest);
            emit(ReplyPiece::Reasoning(&rest));
        }
        for call in &mut self.calls {
            let ours = call.ours.unwrap_or_default();
            let rest = call.args.finish();
            if !rest.is_empty() {
                self.reply.tool_calls[ours].arguments.push_str(&rest);
                emit(ReplyPiece::CallArguments {
                    index: ours,
                    text: &rest,
                });
            }
        }
        Ok(self.reply)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::cloud::openai::{StreamEvent, interpret};
    use crate::cloud::sse::SseEvent;

    /// A piece as owned data, to compare.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Piece {
        Content(String),
        Reasoning(String),
        Start(usize, String, String),
        Args(usize, String),
    }

    fn own(p: ReplyPiece<'_>) -> Piece {
        match p {
            ReplyPiece::Content(t) => Piece::Content(t.into()),
            ReplyPiece::Reasoning(t) => Piece::Reasoning(t.into()),
            ReplyPiece::CallStart { index, id, name } => {
                Piece::Start(index, id.into(), name.into())
            }
            ReplyPiece::CallArguments { index, text } => Piece::Args(index, text.into()),
        }
    }

    /// The `data:` of a chunk whose first choice has `delta`.
    fn chunk(delta: Value) -> String {
        json!({"object": "chat.completion.chunk",
               "choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
        .to_string()
    }

    /// A chunk carrying OpenAI's tool-call deltas.
    fn calls(deltas: Value) -> String {
        chunk(json!({"tool_calls": deltas}))
    }

    /// Runs chunks (the `data:` of each event) through `interpret` and an assembler with
    /// `redactor` and a size limit: the pieces handed out, then the reply or the first
    /// refusal.
    fn run_with(
        redactor: &Redactor,
        max_bytes: usize,
        chunks: &[String],
    ) -> (Vec<Piece>, Result<AssistantReply, String>) {
        let mut pieces = Vec::new();
        let mut emit = |p: ReplyPiece<'_>| pieces.push(own(p));
        let mut asm = Assembler::new(redactor, max_bytes, SplitMix64::new(7));
        let feed = || -> Result<AssistantReply, Excerpt> {
            for data in chunks {
                let ev = SseEvent {
                    event: "message".into(),
                    data: data.clone(),
                };
                let StreamEvent::Chunk {
                    content,
                    reasoning,
                    calls,
                    ..
                } = interpret(&ev, redactor)?
                else {
                    panic!("a chunk: {data}");
                };
                if let Some(r) = reasoning {
                    asm.reasoning(&r, &mut emit)?;
                }
                if let Some(c) = content {
                    asm.content(&c, &mut emit)?;
                }
                for c in calls {
                    asm.call(c, &mut emit)?;
                }
            }
            asm.finish(&mut emit)
        };
        let result = feed().map_err(Excerpt::into_string);
        (pieces, result)
    }

    fn run(chunks: &[String]) -> (Vec<Piece>, Result<AssistantReply, String>) {
        run_with(&Redactor::new(None), 1 << 20, chunks)
    }

    fn call(id: &str, name: &str, arguments: &str) -> GeneratedCall {
        GeneratedCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    /// OpenAI's stream of one call: the name with empty arguments, then the arguments in
    /// pieces; streamed as the local engine streams a call.
    #[test]
    fn a_call_streamed_in_pieces_is_put_together() {
        let (pieces, reply) = run(&[
            chunk(json!({"role": "assistant", "content": null})),
            calls(json!([{"index": 0, "id": "call_Ab12", "type": "function",
                          "function": {"name": "get_weather", "arguments": ""}}])),
            calls(json!([{"index": 0, "function": {"arguments": "{\"ci"}}])),
            calls(json!([{"index": 0, "function": {"arguments": "ty\": \"Par"}}])),
            calls(json!([{"index": 0, "function": {"arguments": "is\"}"}}])),
        ]);
        assert_eq!(
            pieces,
            [
                Piece::Start(0, "call_Ab12".into(), "get_weather".into()),
                Piece::Args(0, "{\"ci".into()),
                Piece::Args(0, "ty\": \"Par".into()),
                Piece::Args(0, "is\"}".into()),
            ]
        );
        assert_eq!(
            reply.unwrap(),
            AssistantReply {
                content: String::new(),
                reasoning: String::new(),
                tool_calls: vec![call("call_Ab12", "get_weather", r#"{"city": "Paris"}"#)],
            }
        );
    }

    /// Several calls, their argument pieces interleaved by index (some providers stream
    /// parallel calls so), indices with a gap, text and reasoning around them.
    #[test]
    fn several_calls_are_kept_apart_by_index() {
        let (pieces, reply) = run(&[
            chunk(json!({"reasoning_content": "Two cities.", "reasoning": "Two cities."})),
            chunk(json!({"content": "Checking"})),
            calls(json!([{"index": 0, "id": "a1", "type": "function",
                          "function": {"name": "weather", "arguments": "{\"city\":"}},
                         {"index": 2, "id": "b2", "type": "function",
                          "function": {"name": "time", "arguments": ""}}])),
            calls(json!([{"index": 2, "function": {"arguments": "{\"tz\":\"UTC\"}"}}])),
            calls(json!([{"index": 0, "function": {"arguments": "\"Oslo\"}"}}])),
            chunk(json!({"reasoning": "Done."})),
        ]);
        let reply = reply.unwrap();
        assert_eq!(reply.content, "Checking");
        assert_eq!(reply.reasoning, "Two cities.Done.");
        assert_eq!(
            reply.tool_calls,
            [
                call("a1", "weather", r#"{"city":"Oslo"}"#),
                call("b2", "time", r#"{"tz":"UTC"}"#),
            ]
        );
        assert_eq!(
            pieces[..4],
            [
                Piece::Reasoning("Two cities.".into()),
                Piece::Content("Checking".into()),
                Piece::Start(0, "a1".into(), "weather".into()),
                Piece::Args(0, "{\"city\":".into()),
            ]
        );
        // What streamed for each call is what the reply holds.
        for (i, c) in reply.tool_calls.iter().enumerate() {
            let streamed: String = pieces
                .iter()
                .filter_map(|p| match p {
                    Piece::Args(j, t) if *j == i => Some(t.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(streamed, c.arguments);
        }
    }

    /// A call without an id gets one like the local engine's; arguments before the name
    /// wait for it; an index-less provider's deltas follow the last call; a repeated name
    /// is not a second call; arguments sent as an object are its JSON text.
    #[test]
    fn providers_that_stray_from_openai_are_read_leniently() {
        let (pieces, reply) = run(&[
            calls(json!([{"index": 0, "function": {"arguments": "{\"a\""}}])),
            calls(json!([{"index": 0, "function": {"name": "f", "arguments": ":1}"}}])),
            calls(json!([{"index": 0, "function": {"name": "f"}}])),
            calls(json!([{"function": {"name": "g", "arguments": {"b": [2]}}}])),
            calls(json!([{"function": {"arguments": ""}}])),
        ]);
        let reply = reply.unwrap();
        assert_eq!(reply.tool_calls.len(), 2, "{reply:?}");
        let (a, b) = (&reply.tool_calls[0], &reply.tool_calls[1]);
        assert_eq!((a.name.as_str(), a.arguments.as_str()), ("f", r#"{"a":1}"#));
        assert_eq!(
            (b.name.as_str(), b.arguments.as_str()),
            ("g", r#"{"b":[2]}"#)
        );
        for c in [a, b] {
            assert_eq!(c.id.len(), crate::tokenizer::reply::CALL_ID_LEN, "{c:?}");
            assert!(c.id.bytes().all(|b| b.is_ascii_alphanumeric()), "{c:?}");
        }
        assert_ne!(a.id, b.id);
        assert_eq!(
            pieces[..3],
            [
                Piece::Start(0, a.id.clone(), "f".into()),
                Piece::Args(0, "{\"a\"".into()),
                Piece::Args(0, ":1}".into()),
            ]
        );
    }

    #[test]
    fn bounds_and_malformed_calls_are_refused_with_what_was_wrong() {
        let start = |i: usize, name: &str| {
            json!({"index": i, "id": format!("c{i}"), "type": "function",
                   "function": {"name": name, "arguments": ""}})
        };
        let many: Vec<Value> = (0..=MAX_CALLS).map(|i| start(i, "f")).collect();
        let cases = [
            (vec![calls(Value::Array(many))], "more than 128 tool calls"),
            (
                vec![calls(json!([start(0, &"n".repeat(65))]))],
                "a tool call name that is not at most 64 characters",
            ),
            (
                vec![calls(json!([start(0, "rm -rf")]))],
                "a tool call name that is not at most 64 characters of [A-Za-z0-9_.-]",
            ),
            (
                vec![calls(json!([{"index": 0, "id": "x".repeat(129),
                                   "function": {"name": "f"}}]))],
                "a tool call id that is not at most 128 visible ASCII characters",
            ),
            (
                vec![calls(
                    json!([{"index": 0, "id": "a b", "function": {"name": "f"}}]),
                )],
                "a tool call id that is not",
            ),
            (
                vec![calls(
                    json!([{"index": 0, "function": {"arguments": "{}"}}]),
                )],
                "a tool call without a function name",
            ),
            (
                vec![
                    calls(json!([start(0, "f")])),
                    calls(json!([{"index": 0, "function": {"name": "g"}}])),
                ],
                "tool call 0 renamed from \"f\" to \"g\"",
            ),
            (
                vec![calls(
                    json!([{"index": 0, "type": "custom", "function": {"name": "f"}}]),
                )],
                "a tool call of type \"custom\", not \"function\"",
            ),
            (
                vec![calls(
                    json!([{"index": 0, "function": {"name": "f", "arguments": 5}}]),
                )],
                "tool call arguments neither text nor an object: 5",
            ),
        ];
        for (chunks, want) in cases {
            let (_, r) = run(&chunks);
            let err = r.unwrap_err();
            assert!(err.starts_with(want), "want {want:?}, got {err:?}");
        }
        // Exactly the limits is fine.
        let most: Vec<Value> = (0..MAX_CALLS).map(|i| start(i, &"n".repeat(64))).collect();
        let (_, r) = run(&[calls(Value::Array(most))]);
        assert_eq!(r.unwrap().tool_calls.len(), MAX_CALLS);
    }

    /// The answer's text, reasoning and arguments together are bounded, however they are
    /// split.
    #[test]
    fn the_answer_is_bounded_in_size_across_all_its_parts() {
        let r = Redactor::new(None);
        let chunks = [
            chunk(json!({"content": "a".repeat(40)})),
            chunk(json!({"reasoning_content": "b".repeat(40)})),
            calls(
                json!([{"index": 0, "id": "i", "function": {"name": "f", "arguments": "c".repeat(18)}}]),
            ),
        ];
        // 40 + 40 + 1 (id) + 1 (name) + 18 = 100.
        assert!(run_with(&r, 100, &chunks).1.is_ok());
        let (_, err) = run_with(&r, 99, &chunks);
        assert_eq!(err.unwrap_err(), "an answer larger than 99 bytes");
    }

    /// The token is kept out of the arguments even when split across two deltas of a call,
    /// and out of names, ids and reasoning.
    #[test]
    fn the_token_is_redacted_in_every_part_of_the_answer() {
        let token = "hf_AssembleTestToken0123456789";
        let r = Redactor::new(Some(
            crate::cloud::ApiToken::from_string(token.into()).unwrap(),
        ));
        let (head, tail) = token.split_at(12);
        let (pieces, reply) = run_with(
            &r,
            1 << 20,
            &[
                chunk(json!({"reasoning_content": format!("key {token}")})),
                calls(json!([{"index": 0, "id": token, "type": "function",
                              "function": {"name": "send", "arguments": format!("{{\"k\":\"{head}")}}])),
                calls(json!([{"index": 0, "function": {"arguments": format!("{tail}\"}}")}}])),
            ],
        );
        let reply = reply.unwrap();
        assert_eq!(reply.reasoning, "key [redacted]");
        assert_eq!(reply.tool_calls[0].arguments, r#"{"k":"[redacted]"}"#);
        assert_eq!(reply.tool_calls[0].id, "[redacted]");
        let all = format!("{pieces:?}");
        assert!(!all.contains(&token[3..15]), "{all}");
    }
}
