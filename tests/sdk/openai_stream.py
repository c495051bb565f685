"""Stream one chat completion through chunkgate with the official OpenAI Python SDK.

Usage: openai_stream.py BASE_URL
Prints one JSON object: the assembled text, the model, the finish reason, the usage the SDK
read, and how many chunks the SDK yielded.
"""

import json
import sys

from openai import OpenAI


def main() -> None:
    client = OpenAI(base_url=sys.argv[1], api_key="sk-test", max_retries=0, timeout=10)
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Say hello in Korean."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, model, finish, usage, chunks = [], None, None, None, 0
    for chunk in stream:
        chunks += 1
        model = chunk.model
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            if choice.delta.content:
                text.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    print(json.dumps({"text": "".join(text), "model": model, "finish_reason": finish,
                      "usage": usage, "chunks": chunks}, ensure_ascii=False))


if __name__ == "__main__":
    main()
