"""engine/protocol.py and docs/protocol.md: messages, their checks, and the documented lines."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.protocol import EVENTS, PROTOCOL_VERSION, REQUESTS, Generate, ProtocolError, decode, encode_request, parse_request

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def documented_lines() -> list[dict]:
    """Every JSON message line in docs/protocol.md's code blocks (the `-> ` / `<- ` marks removed)."""
    lines = []
    for raw in DOC.read_text().splitlines():
        line = re.sub(r"^(->|<-) ", "", raw.strip())
        if line.startswith('{"type"'):
            lines.append(json.loads(line))
    return lines


def test_round_trip():
    line = encode_request("g1", Generate(messages=[{"role": "user", "content": "hi"}], n=3, seed=4))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    message = decode(line)
    assert message["type"] == "generate" and message["id"] == "g1" and message["v"] == PROTOCOL_VERSION
    request = parse_request(message)
    assert request.n == 3 and request.seed == 4 and request.max_new_tokens == 128


@pytest.mark.parametrize("line, error", [
    ("{nope", "malformed JSON"),
    ("[1, 2]", "JSON object"),
    ('{"id": "x"}', "missing 'type'"),
    ('{"type": "fly"}', "unknown request type"),
    ('{"type": "hello", "v": 2}', "protocol version"),
    ('{"type": "generate", "colour": "red"}', "unknown field"),
    ('{"type": "generate", "n": "2"}', "n must be int"),
    ('{"type": "generate", "n": true}', "n must be int"),
    ('{"type": "generate", "messages": "hi"}', "messages must be"),
    ('{"type": "generate", "seed": 1.5}', "seed must be"),
    ('{"type": "rollback", "version": null}', "version must be int"),
    ('{"type": "update", "hyperparameters": []}', "hyperparameters must be dict"),
    ('{"type": "save", "merge": "yes"}', "merge must be bool"),
])
def test_bad_lines_refused_with_a_reason(line, error):
    with pytest.raises(ProtocolError, match=error):
        parse_request(decode(line))


def test_defaults_and_optional_fields():
    request = parse_request(decode('{"type": "generate", "temperature": 1, "seed": null}'))
    assert request.temperature == 1 and request.seed is None and request.n == 2 and request.top_p == 0.95
    assert decode('{"type": "status"}')["id"] == ""


def test_every_documented_line_is_a_valid_message():
    lines = documented_lines()
    kinds = {m["type"] for m in lines}
    assert set(REQUESTS) <= kinds  # every request has an example
    assert set(EVENTS) <= kinds
    for message in lines:
        assert message["v"] == PROTOCOL_VERSION and isinstance(message["id"], str)
        if message["type"] in REQUESTS:
            parse_request(message)
        else:
            assert message["type"] in EVENTS, message


def test_every_request_field_is_documented():
    text = DOC.read_text()
    from dataclasses import fields

    for name, kind in REQUESTS.items():
        assert f"### {name}" in text
        for f in fields(kind):
            assert f"`{f.name}`" in text, (name, f.name)


def test_engine_entry_point_and_chat_helpers_are_light():
    # engine/__main__.py holds the engine's options for both CLIs: parsing them loads no
    # torch, and the engine never imports tui_align.
    code = ("import sys, engine.__main__, engine.chat; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'tui_align') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_check_messages():
    from engine.chat import check_messages
    from engine.protocol import DataError

    check_messages([{"role": "user", "content": "hi"}], "prompt")
    for bad in ([], "hi", [{"role": "user"}], [{"role": "user", "content": 3}]):
        with pytest.raises(DataError, match="^prompt"):
            check_messages(bad, "prompt")
