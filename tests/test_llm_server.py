"""The local LLM the agents' tests run against answers schema-constrained chat completions with JSON."""

from __future__ import annotations

import json

from openai import OpenAI

pytest_plugins = ["tests.llm_server"]  # the llm_endpoint fixture

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "risk": {"type": "string", "enum": ["low", "medium", "high"]},
        "reason": {"type": "string", "maxLength": 200},
    },
    "required": ["risk", "reason"],
}


def test_schema_constrained_completion_is_json_with_the_required_keys(llm_endpoint: tuple[str, str]) -> None:
    base_url, model = llm_endpoint
    client = OpenAI(base_url=base_url, api_key="not-needed", max_retries=0)
    reply = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "You review code changes. Answer in JSON."},
            {"role": "user", "content": "The change edits 400 lines in the payment module. How risky is it?"},
        ],
        response_format={"type": "json_object", "schema": VERDICT_SCHEMA},  # type: ignore[typeddict-unknown-key]
        max_tokens=120,
        temperature=0,
        timeout=60,
    )
    verdict = json.loads(reply.choices[0].message.content or "")
    assert verdict["risk"] in {"low", "medium", "high"}
    assert isinstance(verdict["reason"], str)
