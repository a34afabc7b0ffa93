"""The openai SDK through the router: the routing key is a default header, completions and
chat completions come back whole or streamed (SSE passed through untouched, chunk by chunk),
and the text names the instance the key routes to."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from conftest import ROUTING_HEADER, DemoModel, Platform

KEYS = ["ranker-v1", "ranker-v2"]


@pytest.fixture(scope="module", params=KEYS)
def routed(request, platform: Platform) -> tuple[OpenAI, DemoModel]:
    """An SDK client sending every request with one routing key, and the instance it reaches."""
    key = request.param
    client = OpenAI(
        base_url=f"{platform.router.url}/v1",
        api_key="unused",
        default_headers={ROUTING_HEADER: key},
        max_retries=0,
        timeout=30,
    )
    yield client, platform.routes[key]
    client.close()


def expected_text(served: DemoModel) -> str:
    return f"model {served.model} version {served.version} on instance {served.instance}: hello"


def stepped(stream, served: DemoModel) -> list:
    """The chunks of ``stream``, each next one released on the instance (``--stepped-tokens``)
    only once the previous one has come through the router. A router that held back any part
    of a stream would never deliver the first chunk, and the read would end in the client's
    timeout: the stream is shown to pass chunk by chunk without reading a clock."""
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        served.step()
    return chunks


def test_models_lists_the_routed_instances_model(routed):
    client, served = routed
    models = client.models.list()
    assert [m.id for m in models.data] == [served.model]
    assert models.data[0].owned_by == served.instance


def test_chat_completion_names_the_routed_instance(routed):
    client, served = routed
    reply = client.chat.completions.create(
        model=served.model, messages=[{"role": "user", "content": "which instance are you?"}]
    )
    assert reply.object == "chat.completion"
    assert reply.model == served.model
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected_text(served)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == 8
    assert reply.usage.prompt_tokens == 4


def test_completion_names_the_routed_instance(routed):
    client, served = routed
    reply = client.completions.create(model=served.model, prompt="hello", max_tokens=5)
    assert reply.object == "text_completion"
    assert reply.model == served.model
    assert reply.choices[0].text == " ".join(expected_text(served).split(" ")[:5])
    assert reply.choices[0].finish_reason == "length"


def test_streamed_chat_completion_arrives_chunk_by_chunk(routed):
    client, served = routed
    stream = client.chat.completions.create(
        model=served.model, messages=[{"role": "user", "content": "stream please"}], stream=True
    )
    chunks = stepped(stream, served)
    assert all(c.object == "chat.completion.chunk" and c.model == served.model for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == expected_text(served)
    content_chunks = [c for c in chunks if c.choices[0].delta.content]
    assert len(content_chunks) > 1, "more than one content chunk"
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_streamed_chat_completion_reports_usage_when_asked(routed):
    client, served = routed
    stream = client.chat.completions.create(
        model=served.model,
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = stepped(stream, served)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 8


def test_streamed_completion_arrives_chunk_by_chunk(routed):
    client, served = routed
    stream = client.completions.create(model=served.model, prompt="stream please", stream=True)
    chunks = stepped(stream, served)
    assert all(c.object == "text_completion" and c.model == served.model for c in chunks)
    assert len(chunks) > 1, "more than one chunk"
    assert "".join(c.choices[0].text for c in chunks) == expected_text(served)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_an_unknown_model_is_not_found(routed):
    client, served = routed
    with pytest.raises(openai.NotFoundError, match=served.instance):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
