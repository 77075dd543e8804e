#!/usr/bin/env python3
"""Real clients against `spillway serve --http`: the official `openai` SDK and the `ollama`
package, as Home Assistant's integrations and most scripts use them. Run by
tests/tests/serve_http.rs; prints one JSON object of what it saw (the Rust test checks the
values), and fails (exit 1, with the reason) when a reply does not have the shape the
client library expects.

    http_clients.py openai BASE_URL MODEL [API_KEY]
    http_clients.py openai-errors BASE_URL MODEL [API_KEY]
    http_clients.py ollama HOST MODEL [API_KEY]
    http_clients.py https BASE_URL MODEL CA_FILE     (the SDK over HTTPS, trusting CA_FILE)
"""
import json
import sys


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def openai_basic(base_url, model, key):
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=key or "unused", max_retries=0, timeout=120)
    out = {}
    # Not streamed, with Spillway's own fields through extra_body.
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}],
        max_tokens=6,
        seed=7,
        temperature=0,
        extra_body={"route": "local", "session": "kitchen"},
    )
    c = raw.parse()
    check(c.object == "chat.completion", f"object {c.object}")
    check(c.id.startswith("chatcmpl-"), f"id {c.id}")
    check(len(c.choices) == 1 and c.choices[0].message.role == "assistant", "one assistant choice")
    check(isinstance(c.choices[0].message.content, str), "content is text")
    check(c.choices[0].finish_reason in ("stop", "length"), f"finish_reason {c.choices[0].finish_reason}")
    check(c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens, "usage adds up")
    extra = c.model_extra or {}
    out["plain"] = {
        "model": c.model,
        "content": c.choices[0].message.content,
        "finish_reason": c.choices[0].finish_reason,
        "completion_tokens": c.usage.completion_tokens,
        "route_header": raw.headers.get("x-spillway-route"),
        "spillway": extra.get("spillway"),
    }
    # Streamed, with usage in a last chunk.
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}],
            max_tokens=6,
            seed=7,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"route": "local"},
        )
    )
    check(len(chunks) >= 3, f"{len(chunks)} chunks")
    check(all(ch.object == "chat.completion.chunk" for ch in chunks), "chunk objects")
    check(len({ch.id for ch in chunks}) == 1, "one id across the stream")
    check(chunks[0].choices[0].delta.role == "assistant", "the first delta names the role")
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    check(len(finishes) == 1, f"finish reasons {finishes}")
    check(chunks[-1].choices == [] and chunks[-1].usage is not None, "usage comes last")
    out["stream"] = {
        "content": text,
        "finish_reason": finishes[0],
        "completion_tokens": chunks[-1].usage.completion_tokens,
        "chunks": len(chunks),
    }
    models = client.models.list()
    out["models"] = [m.id for m in models.data]
    return out


def openai_errors(base_url, model, key):
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=key or "unused", max_retries=0, timeout=60)
    seen = {}

    def expect(name, exc, **kw):
        try:
            client.chat.completions.create(**kw)
        except exc as e:
            body = e.body if isinstance(e.body, dict) else {}
            seen[name] = {"status": e.status_code, "code": body.get("code"), "param": body.get("param"),
                          "message": body.get("message")}
            return
        raise AssertionError(f"{name}: no {exc.__name__}")

    msgs = [{"role": "user", "content": "hi"}]
    expect("model_not_found", openai.NotFoundError, model="gpt-4o", messages=msgs)
    expect("n", openai.BadRequestError, model=model, messages=msgs, n=2)
    # This model's vocabulary (tekken v3) has no [ARGS]: it cannot call tools.
    expect("tools", openai.BadRequestError, model=model, messages=msgs,
           tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    expect("tool_name", openai.BadRequestError, model=model, messages=msgs,
           tools=[{"type": "function", "function": {"name": "no spaces", "parameters": {}}}])
    expect("max_tokens", openai.BadRequestError, model=model, messages=msgs, max_tokens=10**6)
    expect("too_large", openai.APIStatusError, model=model,
           messages=[{"role": "user", "content": "x" * (300 << 10)}])
    if key:
        bad = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
        try:
            bad.models.list()
            raise AssertionError("a wrong key was accepted")
        except openai.AuthenticationError as e:
            seen["auth"] = {"status": e.status_code, "code": (e.body or {}).get("code")}
    return seen


def ollama_basic(host, model, key):
    import ollama

    headers = {"Authorization": f"Bearer {key}"} if key else None
    client = ollama.Client(host=host, headers=headers, timeout=120)
    out = {}
    r = client.chat(model=model, messages=[{"role": "user", "content": "Say hi"}],
                    options={"num_predict": 5, "seed": 7, "temperature": 0}, stream=False)
    check(r.done and r.message.role == "assistant", "a done assistant message")
    check(isinstance(r.message.content, str), "content is text")
    out["chat"] = {"content": r.message.content, "done_reason": r.done_reason,
                   "eval_count": r.eval_count, "prompt_eval_count": r.prompt_eval_count}
    parts = list(client.chat(model=model, messages=[{"role": "user", "content": "Say hi"}],
                             options={"num_predict": 5, "seed": 7, "temperature": 0}, stream=True))
    check(parts[-1].done and not any(p.done for p in parts[:-1]), "only the last part is done")
    out["chat_stream"] = {"content": "".join(p.message.content for p in parts),
                          "parts": len(parts), "eval_count": parts[-1].eval_count}
    g = client.generate(model=model, prompt="Say hi", options={"num_predict": 4}, stream=False)
    check(g.done, "generate is done")
    out["generate"] = {"response": g.response, "eval_count": g.eval_count}
    tags = client.list()
    out["tags"] = [m.model for m in tags.models]
    check(tags.models[0].details.format == "gguf", "tags details")
    show = client.show(model)
    out["show"] = {"family": show.details.family, "capabilities": show.capabilities}
    ps = client.ps()
    out["ps"] = [m.model for m in ps.models]
    try:
        client.chat(model="nope", messages=[{"role": "user", "content": "x"}])
        raise AssertionError("an unknown model was accepted")
    except ollama.ResponseError as e:
        out["unknown_model"] = {"status": e.status_code, "error": e.error}
    return out


def https(base_url, model, ca_file):
    import httpx
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0,
                           http_client=httpx.Client(verify=ca_file, timeout=60))
    if model == "-":
        model = client.models.list().data[0].id
    c = client.chat.completions.create(model=model, max_tokens=3,
                                       messages=[{"role": "user", "content": "hi"}])
    check(c.object == "chat.completion", f"object {c.object}")
    untrusted = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    try:
        untrusted.models.list()
        raise AssertionError("a client that does not trust the CA connected")
    except openai.APIConnectionError:
        pass
    return {"finish_reason": c.choices[0].finish_reason, "models": [m.id for m in client.models.list().data]}


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    cmd, base, model = sys.argv[1:4]
    key = sys.argv[4] if len(sys.argv) > 4 else None
    run = {"openai": openai_basic, "openai-errors": openai_errors, "ollama": ollama_basic,
           "https": https}[cmd]
    try:
        print(json.dumps(run(base, model, key)))
    except AssertionError as e:
        print(f"{cmd}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
