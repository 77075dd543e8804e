#!/usr/bin/env python3
"""Tool calls and structured output through real clients against `spillway serve --http`
(on a random-weight model: whatever it "wants", the grammar decides what it can say). Run
by tests/tests/serve_tools.rs; prints one JSON object of what it saw, and fails (exit 1,
with the reason) when a reply breaks its schema or the client library's expectations.
Calls' arguments and answers are validated with `jsonschema`, independently of Spillway.

    tool_clients.py openai BASE_URL MODEL SEEDS
    tool_clients.py ollama HOST MODEL
"""
import json
import re
import sys

import jsonschema

LIGHTS = ["light.kitchen", "light.hall", "light.bedroom"]

# Home-Assistant-like tools. Every value is bounded (enums, lengths, ranges): a model with
# random weights never ends an unbounded string, so only bounded schemas can be finished
# by one in a few tokens.
TOOLS = [
    {"type": "function", "function": {
        "name": "turn_on", "description": "Turn on a light",
        "parameters": {"type": "object", "properties": {"entity_id": {"enum": LIGHTS}},
                       "required": ["entity_id"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "set_temperature", "description": "Set a thermostat",
        "parameters": {"type": "object", "properties": {
            "entity_id": {"type": "string", "enum": ["climate.living_room", "climate.office"]},
            "temperature": {"type": "integer", "minimum": 5, "maximum": 30}},
            "required": ["entity_id", "temperature"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "set_brightness", "description": "Dim a light",
        "parameters": {"type": "object", "properties": {
            "entity_id": {"enum": LIGHTS},
            "brightness": {"type": "integer", "minimum": 0, "maximum": 255},
            "transition": {"type": "boolean"}},
            "required": ["entity_id", "brightness"], "additionalProperties": False}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

ROOM = {
    "type": "object",
    "properties": {
        "room": {"enum": ["kitchen", "hall"]},
        "lights_on": {"type": "boolean"},
        "level": {"type": "integer", "minimum": 1, "maximum": 3},
        "tags": {"type": "array", "items": {"enum": ["warm", "cold"]}, "maxItems": 2},
        "note": {"type": "string", "maxLength": 8},
    },
    "required": ["room", "lights_on", "level", "tags"],
    "additionalProperties": False,
}

ASK = [{"role": "system", "content": "You control a house."},
       {"role": "user", "content": "Turn on the kitchen light"}]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def valid_call(call, where):
    check(call.type == "function", f"{where}: type {call.type}")
    check(re.fullmatch(r"[A-Za-z0-9]{9}", call.id or ""), f"{where}: id {call.id!r}")
    name = call.function.name
    check(name in SCHEMAS, f"{where}: a call of {name!r}, which is not declared")
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, SCHEMAS[name])
    return name


def openai_checks(base_url, model, seeds):
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
    out = {"required": 0, "names": {}, "json_schema": 0, "none": 0}

    # tool_choice "required", one call each: every call validates against its tool.
    for seed in range(seeds):
        c = client.chat.completions.create(
            model=model, messages=ASK, tools=TOOLS, tool_choice="required",
            parallel_tool_calls=False, temperature=1.0, seed=seed, max_tokens=80)
        ch = c.choices[0]
        check(ch.finish_reason == "tool_calls", f"seed {seed}: finish_reason {ch.finish_reason}")
        check(ch.message.tool_calls and len(ch.message.tool_calls) == 1,
              f"seed {seed}: {ch.message.tool_calls}")
        name = valid_call(ch.message.tool_calls[0], f"required seed {seed}")
        out["names"][name] = out["names"].get(name, 0) + 1
        out["required"] += 1

    # response_format json_schema (strict): every answer is JSON of the schema.
    for seed in range(seeds):
        c = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Describe the kitchen"}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": "room", "schema": ROOM, "strict": True}},
            temperature=1.0, seed=seed, max_tokens=120)
        ch = c.choices[0]
        check(ch.finish_reason == "stop", f"json seed {seed}: finish_reason {ch.finish_reason}")
        jsonschema.validate(json.loads(ch.message.content), ROOM)
        out["json_schema"] += 1

    # json_object: any JSON object (bounded here by max_tokens only, so just parse what
    # finished).
    c = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "JSON please"}],
        response_format={"type": "json_object"}, temperature=0, seed=1, max_tokens=40)
    if c.choices[0].finish_reason == "stop":
        check(isinstance(json.loads(c.choices[0].message.content), dict), "json_object")

    # tool_choice "none": never a call.
    for seed in range(5):
        c = client.chat.completions.create(
            model=model, messages=ASK, tools=TOOLS, tool_choice="none",
            temperature=1.0, seed=seed, max_tokens=12)
        ch = c.choices[0]
        check(not ch.message.tool_calls, f"none seed {seed}: {ch.message.tool_calls}")
        check(ch.finish_reason in ("stop", "length"), f"none: {ch.finish_reason}")
        out["none"] += 1

    # Streamed deltas put together are the non-streamed message (same seed, same answer).
    for seed in range(3):
        kw = dict(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                  temperature=1.0, seed=100 + seed, max_tokens=60)
        whole = client.chat.completions.create(**kw).choices[0]
        calls, content, finish = {}, "", None
        for chunk in client.chat.completions.create(stream=True, **kw):
            if not chunk.choices:
                continue
            d = chunk.choices[0].delta
            content += d.content or ""
            for tc in d.tool_calls or []:
                c = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    check(c["id"] is None, "a call's id comes once")
                    c["id"] = tc.id
                if tc.function and tc.function.name:
                    c["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    c["arguments"] += tc.function.arguments
            finish = chunk.choices[0].finish_reason or finish
        want = [{"id": t.id, "name": t.function.name, "arguments": t.function.arguments}
                for t in whole.message.tool_calls or []]
        got = [calls[i] for i in sorted(calls)]
        check(got == want, f"seed {seed}: streamed {got} != whole {want}")
        check(content == (whole.message.content or ""), "streamed content")
        check(finish == whole.finish_reason, f"finish {finish} != {whole.finish_reason}")
    out["streamed_equal"] = 3

    # The SDK's round trip: a call, its result, then an answer.
    first = client.chat.completions.create(
        model=model, messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "turn_on"}},
        temperature=0, seed=5, max_tokens=60)
    call = first.choices[0].message.tool_calls[0]
    check(call.function.name == "turn_on", f"named call {call.function.name}")
    valid_call(call, "named")
    messages = ASK + [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"success": True})},
    ]
    answer = client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, tool_choice="none",
        temperature=0, seed=5, max_tokens=8)
    ch = answer.choices[0]
    check(isinstance(ch.message.content, str) and ch.message.content, "an answer after the result")
    check(not ch.message.tool_calls, "no call after tool_choice none")
    out["round_trip"] = {"call": call.function.name, "answer_finish": ch.finish_reason,
                         "prompt_tokens": answer.usage.prompt_tokens}

    # An unsupported schema is refused naming the field and the keyword.
    try:
        client.chat.completions.create(
            model=model, messages=ASK, max_tokens=4,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}}})
        raise AssertionError("an if/then schema was accepted")
    except openai.BadRequestError as e:
        msg = e.body.get("message", "") if isinstance(e.body, dict) else str(e)
        check("response_format.json_schema.schema" in msg and "if" in msg, f"refusal: {msg}")
        out["refusal"] = msg
    return out


def ollama_checks(host, model):
    import ollama

    client = ollama.Client(host=host, timeout=300)
    out = {}
    r = client.chat(model=model, messages=[{"role": "user", "content": "Describe the kitchen"}],
                    format=ROOM, options={"seed": 3, "temperature": 1.0, "num_predict": 120})
    jsonschema.validate(json.loads(r.message.content), ROOM)
    out["format"] = json.loads(r.message.content)
    r = client.chat(model=model, messages=ASK, tools=TOOLS,
                    options={"seed": 4, "temperature": 1.0, "num_predict": 80})
    for call in r.message.tool_calls or []:
        name = call.function.name
        check(name in SCHEMAS, f"ollama: {name}")
        check(isinstance(call.function.arguments, dict), "ollama arguments are an object")
        jsonschema.validate(call.function.arguments, SCHEMAS[name])
    out["tool_calls"] = len(r.message.tool_calls or [])
    # Streamed: the calls come whole with the last object.
    calls = []
    for part in client.chat(model=model, messages=ASK, tools=TOOLS, stream=True,
                            options={"seed": 4, "temperature": 1.0, "num_predict": 80}):
        calls += part.message.tool_calls or []
    check(len(calls) == out["tool_calls"], f"streamed {len(calls)} calls, whole {out['tool_calls']}")
    return out


def main():
    cmd = sys.argv[1]
    if cmd == "openai":
        out = openai_checks(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif cmd == "ollama":
        out = ollama_checks(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - the test prints the reason
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
