"""Drives the server with the official Python `openai` client (run by serve/tests/server.rs).

Usage: openai_client.py BASE_URL   (e.g. http://127.0.0.1:8080/v1); prints one JSON line.
"""
import json
import sys

from openai import OpenAI

client = OpenAI(base_url=sys.argv[1], api_key="unused")
messages = [{"role": "user", "content": "What is the capital of France?"}]

chat = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=10, temperature=0)
assert chat.object == "chat.completion", chat
assert chat.choices[0].finish_reason in ("stop", "length")

stream = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=10, temperature=0, stream=True)
streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

completion = client.completions.create(model="smollm2", prompt="The sky is", max_tokens=5, temperature=0, logprobs=2)
assert len(completion.choices[0].logprobs.tokens) == completion.usage.completion_tokens

# The steering extension travels in `extra_body`.
steered = client.completions.create(model="smollm2", prompt="My favourite food is", max_tokens=8, temperature=0,
                                    extra_body={"steering": {"vector": "cheese_l15", "factor": 150.0}})
plain = client.completions.create(model="smollm2", prompt="My favourite food is", max_tokens=8, temperature=0)

models = client.models.list()
assert len(models.data) == 1

print(json.dumps({
    "chat": chat.choices[0].message.content,
    "chat_stream": streamed,
    "completion": completion.choices[0].text,
    "steered": steered.choices[0].text,
    "steered_differs": steered.choices[0].text != plain.choices[0].text,
}))
