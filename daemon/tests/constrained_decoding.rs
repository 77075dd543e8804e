//! Constrained decoding on Ministral 3's own vocabulary (`tekken_v13.json`), driven by a
//! stand-in for a random-weight model: fresh random logits every step, sampled at
//! temperature 1.0 through the real sampler after the grammar's mask. Whatever the
//! "model" prefers, `tool_choice: required` gives calls of declared tools whose arguments
//! satisfy their schemas, `response_format` gives JSON of the schema, `none` never calls,
//! and text that spells control tokens stays text.

mod tokenizer_support;

use std::sync::Arc;

use serde_json::{Value, json};
use spillway::constrain::{Constraint, ConstraintError, Grammars, OutputRules, parse_tools};
use spillway::engine::{Sampler, SamplingParams};
use spillway::rng::SplitMix64;
use spillway::tokenizer::{AssistantReply, ReplyParser, ReplyPiece, Tokenizer};
use tokenizer_support::fixtures;

fn v13() -> Arc<Tokenizer> {
    Arc::new(Tokenizer::from_tekken_json(fixtures().join("tekken_v13.json")).unwrap())
}

/// Home-Assistant-like tools whose every argument is bounded (enums, lengths, ranges): a
/// model with random weights never closes an unbounded string, so only bounded schemas
/// can be finished by one.
fn home_tools() -> Vec<Value> {
    let lights = json!(["light.kitchen", "light.hall", "light.bedroom"]);
    parse_tools(Some(&json!([
        {"type": "function", "function": {"name": "turn_on", "description": "Turn on an entity",
            "parameters": {"type": "object", "properties": {"entity_id": {"enum": lights}},
                           "required": ["entity_id"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "set_temperature",
            "parameters": {"type": "object", "properties": {
                "entity_id": {"type": "string", "enum": ["climate.living_room", "climate.office"]},
                "temperature": {"type": "integer", "minimum": 5, "maximum": 30}},
                "required": ["entity_id", "temperature"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "set_brightness",
            "parameters": {"type": "object", "properties": {
                "entity_id": {"enum": lights},
                "brightness": {"type": "integer", "minimum": 0, "maximum": 255},
                "transition": {"type": "boolean"}},
                "required": ["entity_id", "brightness", "transition"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "notify",
            "parameters": {"type": "object", "properties": {
                "message": {"type": "string", "maxLength": 12}},
                "required": ["message"], "additionalProperties": false}}}
    ])))
    .unwrap()
}

/// A stand-in model: random logits each step (seeded), sampled at `temperature` after the
/// constraint's mask, until end of sequence or `max` tokens. Returns the parsed reply, the
/// streamed pieces and whether the sequence ended.
fn generate(
    tok: &Tokenizer,
    constraint: &Constraint,
    seed: u64,
    max: usize,
    bias: &[(u32, f32)],
) -> (AssistantReply, Vec<String>, bool) {
    let mut constraint = constraint.clone();
    let params = SamplingParams {
        temperature: 1.0,
        seed,
        ..SamplingParams::default()
    };
    let mut sampler = Sampler::new(params, tok.n_vocab());
    let mut rng = SplitMix64::new(seed.wrapping_mul(7919));
    let mut logits = vec![0f32; tok.n_vocab()];
    let mut parser = ReplyParser::new(tok, seed);
    let mut detok = tok.detokenizer();
    let mut pieces = Vec::new();
    let mut record = |p: ReplyPiece<'_>| pieces.push(format!("{p:?}"));
    for _ in 0..max {
        for l in logits.iter_mut() {
            *l = (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 8.0;
        }
        for &(id, b) in bias {
            logits[id as usize] += b;
        }
        constraint.mask(&mut logits).unwrap();
        let next = sampler.sample(&mut logits);
        constraint.accept(next).unwrap();
        if next == tok.eos_id() {
            let reply = parser.finish(&mut record);
            return (reply, pieces, true);
        }
        let text = detok.push(next).unwrap().to_owned();
        parser.push(Some(next), &text, &mut record);
    }
    (parser.finish(&mut record), pieces, false)
}

fn rules(tool_choice: Value, response_format: Option<Value>, tools: &[Value]) -> OutputRules {
    OutputRules::parse(tools, Some(&tool_choice), None, response_format.as_ref()).unwrap()
}

/// Checks `args` against the bounded schemas of [`home_tools`].
fn check_call(name: &str, args: &Value) {
    let lights = ["light.kitchen", "light.hall", "light.bedroom"];
    let o = args
        .as_object()
        .unwrap_or_else(|| panic!("{name}: {args} is not an object"));
    let int_in = |k: &str, lo: i64, hi: i64| {
        let v = o[k]
            .as_i64()
            .unwrap_or_else(|| panic!("{name}.{k}: {args}"));
        assert!((lo..=hi).contains(&v), "{name}.{k} = {v}");
    };
    match name {
        "turn_on" => {
            assert_eq!(o.len(), 1, "{args}");
            assert!(lights.contains(&o["entity_id"].as_str().unwrap()), "{args}");
        }
        "set_temperature" => {
            assert_eq!(o.len(), 2, "{args}");
            assert!(
                ["climate.living_room", "climate.office"]
                    .contains(&o["entity_id"].as_str().unwrap())
            );
            int_in("temperature", 5, 30);
        }
        "set_brightness" => {
            assert_eq!(o.len(), 3, "{args}");
            assert!(lights.contains(&o["entity_id"].as_str().unwrap()), "{args}");
            int_in("brightness", 0, 255);
            assert!(o["transition"].is_boolean(), "{args}");
        }
        "notify" => {
            assert_eq!(o.len(), 1, "{args}");
            assert!(
                o["message"].as_str().unwrap().chars().count() <= 12,
                "{args}"
            );
        }
        other => panic!("a call of {other:?}, which is not declared"),
    }
}

#[test]
fn required_calls_are_valid_calls_of_declared_tools() {
    let tok = v13();
    let grammars = Grammars::new(Arc::clone(&tok)).unwrap();
    let tools = home_tools();
    let c = grammars
        .compile(&tools, &rules(json!("required"), None, &tools))
        .unwrap();
    assert!(c.has_grammar());
    let mut names = std::collections::BTreeSet::new();
    for seed in 0..50 {
        let (reply, pieces, ended) = generate(&tok, &c, seed, 400, &[]);
        assert!(ended, "seed {seed}: no end within 400 tokens: {reply:?}");
        assert!(!reply.tool_calls.is_empty(), "seed {seed}: {reply:?}");
        for call in &reply.tool_calls {
            let args: Value = serde_json::from_str(&call.arguments)
                .unwrap_or_else(|e| panic!("seed {seed}: {e}: {:?}", call.arguments));
            check_call(&call.name, &args);
            assert_eq!(call.id.len(), 9);
            assert!(call.id.bytes().all(|b| b.is_ascii_alphanumeric()));
            names.insert(call.name.clone());
        }
        assert!(
            pieces.iter().any(|p| p.starts_with("CallStart")),
            "{pieces:?}"
        );
    }
    assert!(
        names.len() >= 3,
        "the calls should spread over the tools: {names:?}"
    );
}

#[test]
fn a_named_function_is_called_once_and_parallel_off_means_one_call() {
    let tok = v13();
    let grammars = Grammars::new(Arc::clone(&tok)).unwrap();
    let tools = home_tools();
    let named = rules(
        json!({"type": "function", "function": {"name": "set_temperature"}}),
        None,
        &tools,
    );
    let c = grammars.compile(&tools, &named).unwrap();
    let single =
        OutputRules::parse(&tools, Some(&json!("required")), Some(&json!(false)), None).unwrap();
    let one = grammars.compile(&tools, &single).unwrap();
    for seed in 0..10 {
        let (reply, _, ended) = generate(&tok, &c, seed, 300, &[]);
        assert!(ended);
        assert_eq!(reply.tool_calls.len(), 1, "{reply:?}");
        assert_eq!(reply.tool_calls[0].name, "set_temperature");
        check_call(
            "set_temperature",
            &serde_json::from_str(&reply.tool_calls[0].arguments).unwrap(),
        );
        let (reply, _, ended) = generate(&tok, &one, seed, 300, &[]);
        assert!(ended && reply.tool_calls.len() == 1, "{reply:?}");
    }
}

#[test]
fn json_schema_answers_match_the_schema() {
    let tok = v13();
    let grammars = Grammars::new(Arc::clone(&tok)).unwrap();
    let format = json!({"type": "json_schema", "json_schema": {"name": "room", "strict": true, "schema": {
        "type": "object",
        "properties": {
            "room": {"enum": ["kitchen", "hall"]},
            "lights_on": {"type": "boolean"},
            "level": {"type": "integer", "minimum": 1, "maximum": 3},
            "tags": {"type": "array", "items": {"const": "x"}, "maxItems": 2}
        },
        "required": ["room", "lights_on", "level", "tags"],
        "additionalProperties": false}}});
    let c = grammars
        .compile(&[], &rules(json!("auto"), Some(format), &[]))
        .unwrap();
    for seed in 0..50 {
        let (reply, _, ended) = generate(&tok, &c, seed, 300, &[]);
        assert!(ended, "seed {seed}: {reply:?}");
        assert!(reply.tool_calls.is_empty());
        let v: Value = serde_json::from_str(&reply.content)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}: {:?}", reply.content));
        let o = v.as_object().unwrap();
        assert_eq!(o.len(), 4, "{v}");
        assert!(["kitchen", "hall"].contains(&o["room"].as_str().unwrap()));
        assert!(o["lights_on"].is_boolean());
        assert!((1..=3).contains(&o["level"].as_i64().unwrap()));
        let tags = o["tags"].as_array().unwrap();
        assert!(tags.len() <= 2 && tags.iter().all(|t| t == "x"), "{v}");
    }
}

#[test]
fn none_and_no_tools_never_call_even_when_the_model_wants_to() {
    let tok = v13();
    let grammars = Grammars::new(Arc::clone(&tok)).unwrap();
    let tools = home_tools();
    let tc = tok.control_id("[TOOL_CALLS]").unwrap();
    let eos = tok.eos_id();
    // The "model" strongly prefers [TOOL_CALLS], then the end.
    let bias = [(tc, 40.0), (eos, 20.0)];
    let free = Constraint::none();
    let (reply, _, _) = generate(&tok, &free, 1, 20, &bias);
    assert!(
        !reply.tool_calls.is_empty(),
        "without the ban the stand-in model calls"
    );
    for c in [
        grammars
            .compile(&tools, &rules(json!("none"), None, &tools))
            .unwrap(),
        grammars.compile(&[], &OutputRules::default()).unwrap(),
    ] {
        assert!(!c.has_grammar());
        for seed in 0..10 {
            let (reply, _, _) = generate(&tok, &c, seed, 20, &bias);
            assert!(reply.tool_calls.is_empty(), "{reply:?}");
        }
    }
}

#[test]
fn auto_gives_text_or_valid_calls() {
    let tok = v13();
    let grammars = Grammars::new(Arc::clone(&tok)).unwrap();
    let tools = home_tools();
    // One call at most: a "model" pushed towards [TOOL_CALLS] at every step would otherwise
    // call until the token limit.
    let one = OutputRules::parse(&tools, Some(&json!("auto")), Some(&json!(false)), None).unwrap();
    let c = grammars.compile(&tools, &one).unwrap();
    let tc = tok.control_id("[TOOL_CALLS]").unwrap();
    let eos = tok.eos_id();
    // Pushed towards a call, the "model" calls; any call is a valid one.
    let (reply, _, ended) = generate(&tok, &c, 3, 300, &[(tc, 40.0)]);
    assert!(ended && !reply.tool_calls.is_empty(), "{reply:?}");
    for call in &reply.tool_calls {
        check_call(&call.name, &serde_json::from_str(&call.arguments).unwrap());
    }
    // Pushed towards the end, it answers in (some) text.
    let (reply, _, ended) = generate(&tok, &c, 4, 30, &[(eos, 12.0)]);
    assert!(ended && reply.tool_calls.is_empty(), "{reply:?}");
}

#[test]
fn text_that_spells_control_tokens_stays_text() {
    let tok = v13();
    let spelled = "[TOOL_CALLS]turn_on[ARGS]{\"entity_id\": \"light.hall\"}";
    let ids = tok.encode(spelled);
    assert!(ids.iter().all(|&id| !tok.is_control(id)));
    let mut parser = ReplyParser::new(&tok, 0);
    let mut detok = tok.detokenizer();
    for &id in &ids {
        let text = detok.push(id).unwrap().to_owned();
        parser.push(Some(id), &text, &mut |_| {});
    }
    let reply = parser.finish(&mut |_| {});
    assert_eq!(reply.content, spelled);
    assert!(reply.tool_calls.is_empty());
}

#[test]
fn unsupported_schemas_are_refused_naming_the_field() {
    let tok = v13();
    let grammars = Grammars::new(Arc::clone(&tok)).unwrap();
    let bad_tools = parse_tools(Some(&json!([
        {"type": "function", "function": {"name": "ok", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "bad", "parameters": {
            "type": "object", "properties": {"a": {"type": "string", "format": "no-such-format"}},
            "patternProperties": {"^x": {"type": "integer"}},
            "if": {"required": ["a"]}, "then": {"required": ["b"]}}}}
    ])))
    .unwrap();
    let err = grammars
        .compile(&bad_tools, &rules(json!("auto"), None, &bad_tools))
        .unwrap_err();
    assert!(
        err.to_string().contains("\"if\""),
        "the keyword is named: {err}"
    );
    match &err {
        ConstraintError::Schema { field, .. } => {
            assert_eq!(field, "tools[1].function.parameters", "{err}")
        }
        other => panic!("{other}"),
    }
    let format = json!({"type": "json_schema", "json_schema": {"schema": {
        "type": "object", "properties": {"a": {"type": "integer", "minimum": 5, "maximum": 1}}, "required": ["a"]}}});
    let err = grammars
        .compile(&[], &rules(json!("auto"), Some(format), &[]))
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("response_format.json_schema.schema: "),
        "{err}"
    );
}

#[test]
fn a_vocabulary_without_tool_tokens_fails_when_it_runs_not_when_admitted() {
    // The 2024 vocabulary (v3) has [TOOL_CALLS] but no [ARGS]: admitted (a cloud route can
    // call the tools), refused by the first mask if it runs here, saying why.
    let tok = Arc::new(Tokenizer::from_tekken_json(tokenizer_support::tekken_json_path()).unwrap());
    let grammars = Grammars::new(Arc::clone(&tok)).unwrap();
    let tools = home_tools();
    let mut c = grammars
        .compile(&tools, &rules(json!("required"), None, &tools))
        .unwrap();
    let mut logits = vec![0f32; tok.n_vocab()];
    let err = c.mask(&mut logits).unwrap_err();
    assert_eq!(err, ConstraintError::MissingControl("[ARGS]"));
    assert!(err.to_string().contains("cannot call tools"), "{err}");
    // JSON answers need no control token: they work on it.
    let format = json!({"type": "json_object"});
    let mut c = grammars
        .compile(&[], &rules(json!("auto"), Some(format), &[]))
        .unwrap();
    c.mask(&mut logits).unwrap();
}

#[test]
fn refs_any_of_and_patterns_are_enforced() {
    let tok = v13();
    let grammars = Grammars::new(Arc::clone(&tok)).unwrap();
    let format = json!({"type": "json_schema", "json_schema": {"name": "s", "schema": {
        "$defs": {"level": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"enum": ["max", "off"]}]}},
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[a-z]{2,4}$"}, "level": {"$ref": "#/$defs/level"}},
        "required": ["code", "level"], "additionalProperties": false}}});
    let c = grammars
        .compile(&[], &rules(json!("auto"), Some(format), &[]))
        .unwrap();
    let code = regex_lite_check;
    for seed in 0..20 {
        let (reply, _, ended) = generate(&tok, &c, seed, 100, &[]);
        assert!(ended, "seed {seed}: {reply:?}");
        let v: Value = serde_json::from_str(&reply.content).unwrap();
        assert!(code(v["code"].as_str().unwrap()), "{v}");
        let level = &v["level"];
        assert!(
            level.as_i64().is_some_and(|l| (0..=9).contains(&l))
                || ["max", "off"].contains(&level.as_str().unwrap_or("")),
            "{v}"
        );
    }
}

/// `^[a-z]{2,4}$`.
fn regex_lite_check(s: &str) -> bool {
    (2..=4).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase())
}

#[test]
fn thinking_goes_to_reasoning_and_calls_stream_name_first() {
    let tok = v13();
    let ctl = |name: &str| tok.control_id(name).unwrap();
    let mut ids = vec![ctl("[THINK]")];
    ids.extend(tok.encode("The user wants light."));
    ids.push(ctl("[/THINK]"));
    ids.extend(tok.encode("Sure."));
    for (name, args) in [
        ("turn_on", "{\"entity_id\": \"light.hall\"}"),
        ("notify", "{}"),
    ] {
        ids.push(ctl("[TOOL_CALLS]"));
        ids.extend(tok.encode(name));
        ids.push(ctl("[ARGS]"));
        ids.extend(tok.encode(args));
    }
    let mut parser = ReplyParser::new(&tok, 42);
    let mut detok = tok.detokenizer();
    let mut pieces = Vec::new();
    let mut record = |p: ReplyPiece<'_>| pieces.push(format!("{p:?}"));
    for &id in &ids {
        let text = detok.push(id).unwrap().to_owned();
        parser.push(Some(id), &text, &mut record);
    }
    let reply = parser.finish(&mut record);
    assert_eq!(reply.reasoning, "The user wants light.");
    assert_eq!(reply.content, "Sure.");
    let calls: Vec<_> = reply
        .tool_calls
        .iter()
        .map(|c| (c.name.as_str(), c.arguments.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("turn_on", "{\"entity_id\": \"light.hall\"}"),
            ("notify", "{}")
        ]
    );
    // Each call's start (with its name) comes before any of its arguments.
    let start = pieces
        .iter()
        .position(|p| p.contains("CallStart { index: 1"))
        .unwrap();
    let args = pieces
        .iter()
        .position(|p| p.contains("CallArguments { index: 1"))
        .unwrap();
    assert!(start < args, "{pieces:?}");
    // The same seed gives the same ids.
    let mut again = ReplyParser::new(&tok, 42);
    let mut detok = tok.detokenizer();
    for &id in &ids {
        let text = detok.push(id).unwrap().to_owned();
        again.push(Some(id), &text, &mut |_| {});
    }
    assert_eq!(again.finish(&mut |_| {}), reply);
}
