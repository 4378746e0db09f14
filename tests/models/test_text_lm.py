"""Text LLM backends: local TextLM on a tiny model, the OpenAI-compatible client against a real
HTTP server on loopback, and the content-addressed cache."""

import pytest
from servers import LoopbackServer, chat_reply
from tiny import tiny_llm, tiny_tokenizer

from speechsum.models.text_lm import CachedChat, OpenAIChat, RemoteError, TextLM, chat_backend

CONV = [{"role": "system", "content": "you are helpful"}, {"role": "user", "content": "summarize the meeting"}]


def test_local_batch_equals_single():
    tok = tiny_tokenizer()
    lm = TextLM(tiny_llm(len(tok), seed=3), tok)
    convs = [CONV, [{"role": "user", "content": "title of the report"}], [{"role": "user", "content": "a"}]]
    batched = lm.chat(convs, max_new_tokens=6, batch_size=3)
    assert batched == [lm.chat([c], max_new_tokens=6)[0] for c in convs]


def _server(script):
    """A loopback chat server; `script` lists what to answer per request: ok, 500, garbage, weird."""
    script = list(script)

    def respond(path, body):
        kind = script.pop(0) if script else "ok"
        if kind == "500":
            return 500, b"overloaded"
        if kind == "garbage":
            return 200, b"<html>nope</html>"
        if kind == "weird":
            return 200, {"error": "weird"}
        return 200, chat_reply(f" echo: {body['messages'][-1]['content']} ")

    return LoopbackServer(respond)


@pytest.fixture
def server():
    servers = []

    def make(script=()):
        s = _server(script)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def test_remote_chat_speaks_the_protocol(server):
    s = server()
    client = OpenAIChat(s.url, "teacher-model", api_key="k", timeout=5)
    assert client.chat([CONV], max_new_tokens=32) == ["echo: summarize the meeting"]
    path, body = s.requests[0]
    assert path == "/v1/chat/completions" and body["model"] == "teacher-model" and body["max_tokens"] == 32
    assert body["messages"] == CONV


def test_remote_retries_5xx_then_succeeds(server):
    s = server(["500", "500", "ok"])
    client = OpenAIChat(s.url, "m", timeout=5, retries=3, backoff=0.01)
    assert client.chat([CONV]) == ["echo: summarize the meeting"]
    assert len(s.requests) == 3


def test_remote_errors_are_clear(server):
    s = server(["garbage"])
    with pytest.raises(RemoteError, match="non-JSON"):
        OpenAIChat(s.url, "m", timeout=5, retries=0).chat([CONV])
    s2 = server(["weird"])
    with pytest.raises(RemoteError, match="no choices"):
        OpenAIChat(s2.url, "m", timeout=5, retries=0).chat([CONV])
    s3 = server(["500"] * 5)
    with pytest.raises(RemoteError, match="HTTP 500.*after 2 attempts"):
        OpenAIChat(s3.url, "m", timeout=5, retries=1, backoff=0.01).chat([CONV])
    port = s.port
    s.close()  # nothing listens there now
    with pytest.raises(RemoteError, match="unreachable.*is the server running"):
        OpenAIChat(f"http://127.0.0.1:{port}/v1", "m", timeout=2, retries=1, backoff=0.01).chat([CONV])


def test_cache_sends_each_request_once(server, tmp_path):
    s = server()
    cached = CachedChat(OpenAIChat(s.url, "m", timeout=5), tmp_path)
    first = cached.chat([CONV, CONV + [{"role": "user", "content": "again"}]])
    again = cached.chat([CONV, CONV + [{"role": "user", "content": "again"}]])
    assert first == again and len(s.requests) == 2
    cached.chat([CONV], temperature=0.7)  # a different request is a miss
    assert len(s.requests) == 3


def test_backend_spec_parsing():
    with pytest.raises(ValueError, match="openai:BASE_URL#MODEL"):
        chat_backend("openai:http://127.0.0.1:1/v1")
