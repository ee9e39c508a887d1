"""Reward functions: built-ins, user code by module or file, and errors that point at the user's line."""

from __future__ import annotations

import textwrap

import pytest

from engine.protocol import UserError
from engine.rewards import load_reward


def write(folder, name: str, source: str):
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def test_length_counts_words():
    reward = load_reward("length")
    assert reward(["p", "p", "p"], ["one two  three", "", "  x\ny "]) == [3.0, 0.0, 2.0]


def test_user_function_from_a_file_and_from_a_module(tmp_path, monkeypatch):
    write(tmp_path, "my_scores.py", """
        def exclaim(prompts, responses):
            return [r.count("!") for r in responses]
    """)
    assert load_reward(f"{tmp_path}/my_scores.py:exclaim")(["a", "b"], ["hi!", "no"]) == [1.0, 0.0]
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_reward("my_scores:exclaim")(["a"], ["!!"]) == [2.0]


def test_a_raising_function_names_the_users_file_and_line(tmp_path):
    path = write(tmp_path, "broken_reward.py", """
        def helper(text):
            return len(text) / 0

        def score(prompts, responses):
            return [helper(r) for r in responses]
    """)
    reward = load_reward(f"{path}:score")
    with pytest.raises(UserError) as info:
        reward(["p"], ["r"])
    message = str(info.value)
    assert "ZeroDivisionError" in message
    assert f"{path}:3" in message and "return len(text) / 0" in message
    assert "engine" not in message.replace(str(path), "")  # none of our frames
    assert "\n" not in message


def test_import_errors_name_the_users_line(tmp_path):
    syntax = write(tmp_path, "bad_syntax.py", "def score(prompts, responses)\n    return []\n")
    with pytest.raises(UserError, match=r"SyntaxError.*bad_syntax\.py:1"):
        load_reward(f"{syntax}:score")
    missing = write(tmp_path, "bad_import.py", "import os\nimport surely_not_a_module_xyz\n")
    with pytest.raises(UserError, match=r"ModuleNotFoundError.*bad_import\.py:2: import surely_not_a_module_xyz"):
        load_reward(f"{missing}:score")


@pytest.mark.parametrize("body, expected", [
    ("return 1.0", "must return a list of numbers, got float"),
    ("return [1.0]", "returned 1 scores for 2 responses"),
    ("return [1.0, 'x']", "returned 'x' for response 2"),
    ("return [1.0, float('nan')]", "returned nan for response 2"),
])
def test_wrong_return_values(tmp_path, body, expected):
    path = write(tmp_path, "wrong.py", f"def score(prompts, responses):\n    {body}\n")
    with pytest.raises(UserError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_reward(f"{path}:score")(["a", "b"], ["c", "d"])


def test_bad_specs(tmp_path):
    write(tmp_path, "nofunc.py", "x = 1\n")
    for spec, expected in [("lenght", "choose length"), (f"{tmp_path}/absent.py:f", "no such file"),
                           (f"{tmp_path}/nofunc.py:score", "has no function 'score'"),
                           ("surely_absent_module_q:f", "no module named"),
                           (f"rm:{tmp_path}", "not a reward model folder")]:
        with pytest.raises(UserError, match=expected):
            load_reward(spec)
