"""A streamed chat completion with the OpenAI Python SDK through the router: the chunks are
printed as they arrive.

    .venv/bin/python scripts/quickstart/openai_stream.py 127.0.0.1:8080 ranker-v2
"""

from __future__ import annotations

import sys

from openai import OpenAI


def main() -> None:
    url, key = sys.argv[1], sys.argv[2]
    client = OpenAI(base_url=f"http://{url}/v1", api_key="unused", default_headers={"x-routing-key": key})
    stream = client.chat.completions.create(
        model="ranker", messages=[{"role": "user", "content": "hello"}], stream=True
    )
    chunks = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
            print(chunk.choices[0].delta.content, end="", flush=True)
    print(f"\n({chunks} chunks)")


if __name__ == "__main__":
    main()
