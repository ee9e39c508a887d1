"""Training data in TRL's formats: read, validate, tokenize, collate.

Rows are preference `{prompt, chosen, rejected}`, SFT `{prompt, completion}` /
`{messages}` or unpaired preference (KTO) `{prompt, completion, label}`, each either
standard (strings) or conversational (lists of `{role, content}` messages). Tokenization
follows TRL: a conversational prompt gets the chat template with the generation prompt;
the completion is what the full conversation adds after it; a standard completion gets
the EOS token appended.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.chat import chat_ids, check_messages
from engine.protocol import DataError

KIND_KEYS = {"preference": ("prompt", "chosen", "rejected"), "sft": ("prompt", "completion"),
             "kto": ("prompt", "completion", "label")}


TRAIN_SPLITS = ("train",)  # the split a dataset's training rows come from unless --split says
EVAL_SPLITS = ("test", "validation", "eval")  # for --eval-data: the held-out split of a dataset, if it has one
TABLE_FILES = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".arrow": "arrow"}  # read by datasets


def read_rows(path: str | Path, split: str | None = None, preferred: tuple[str, ...] = TRAIN_SPLITS) -> list[dict]:
    """Rows of a JSONL file, a folder written by `datasets.save_to_disk`, or what
    `datasets.load_dataset` reads: a folder of JSON/CSV/parquet files, a parquet/CSV/JSON
    file, or a hub id (where there is a network). `split` picks the split; without it the
    first of `preferred` the dataset has, else its first."""
    spec = str(path)
    path = Path(path).expanduser()
    if path.is_file() and path.suffix not in TABLE_FILES:
        rows = _jsonl_rows(path)
    elif path.is_dir() and any((path / f).exists() for f in ("dataset_dict.json", "state.json")):
        rows = _dataset_rows(path, split, preferred, saved=True)
    elif path.exists() or _hub_id(spec):
        rows = _dataset_rows(path if path.exists() else spec, split, preferred, saved=False)
    else:
        raise DataError(f"{spec}: no such file or folder")
    if not rows:
        raise DataError(f"{spec}: no rows")
    return rows


def _hub_id(spec: str) -> bool:
    """Looks like `name` or `owner/name` on the hub, not a path someone mistyped."""
    parts = spec.split("/")
    return len(parts) <= 2 and all(parts) and not spec.startswith((".", "~")) and Path(spec).suffix == ""


def _dataset_rows(where, split: str | None, preferred: tuple[str, ...], saved: bool) -> list[dict]:
    import datasets

    datasets.disable_progress_bars()  # a dataset of our size loads in a moment; the run has its own bars
    try:
        if saved:
            dataset = datasets.load_from_disk(str(where))
        elif isinstance(where, Path) and where.is_file():
            dataset = datasets.load_dataset(TABLE_FILES[where.suffix], data_files=str(where))
        else:
            dataset = datasets.load_dataset(str(where))
    except Exception as exc:  # datasets raises many types for what it cannot read (or reach)
        message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        how = "not a dataset saved with save_to_disk" if saved else "datasets.load_dataset could not read it"
        raise DataError(f"{where}: {how} ({message})") from None
    if hasattr(dataset, "keys"):  # a DatasetDict: pick the split
        names = list(dataset.keys())
        if split is not None and split not in names:
            raise DataError(f"{where}: no split {split!r} (it has {', '.join(names)}); choose one with --split")
        dataset = dataset[split or next((name for name in preferred if name in names), names[0])]
    elif split is not None and split not in TRAIN_SPLITS:
        raise DataError(f"{where}: a dataset without splits: drop --split {split}")
    return list(dataset)


def _jsonl_rows(path: Path) -> list[dict]:
    rows = []
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: a row must be a JSON object")
        rows.append(row)
    return rows


def detect_kind(row: dict) -> str:
    if {"chosen", "rejected"} <= row.keys():
        return "preference"
    if "label" in row:
        return "kto"
    if "messages" in row or {"prompt", "completion"} <= row.keys():
        return "sft"
    raise DataError("cannot tell the kind of row: expected keys prompt/chosen/rejected, prompt/completion or messages")


def load_examples(path: str | Path, kind: str, split: str | None = None,
                  preferred: tuple[str, ...] = TRAIN_SPLITS) -> list[dict]:
    """Read (read_rows) and validate rows of the given kind ("preference", "sft" or "kto")."""
    rows = read_rows(path, split, preferred)
    for number, row in enumerate(rows, 1):
        try:
            validate(row, kind)
        except DataError as exc:
            raise DataError(f"{path}: row {number}: {exc}") from None
    return rows


def validate(row: dict, kind: str) -> None:
    if kind == "group":
        validate_group(row)
        return
    if kind == "sft" and "messages" in row:
        messages = row["messages"]
        check_messages(messages, "messages")
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise DataError("messages must end with an assistant reply after at least one other message")
        return
    missing = [key for key in KIND_KEYS[kind] if key not in row]
    if missing:
        raise DataError(f"missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)} for {kind} data")
    if kind == "kto" and not isinstance(row["label"], bool):
        raise DataError(f"label must be true (desirable) or false (undesirable), got {json.dumps(row['label'])[:40]}")
    conversational = isinstance(row["prompt"], list)
    for key in KIND_KEYS[kind]:
        if key == "label":
            continue
        value = row[key]
        if conversational:
            check_messages(value, key)
        elif not isinstance(value, str):
            raise DataError(f"{key} must be a string (or, in every field, a list of messages), got {type(value).__name__}")
        elif key != "prompt" and not value:
            raise DataError(f"{key} is empty")


def conversational(row: dict) -> dict:
    """A conversational prompt with plain-string replies: wrap each reply as one assistant message."""
    if not isinstance(row.get("prompt"), list):
        return row
    out = dict(row)
    for key in ("chosen", "rejected", "completion"):
        if isinstance(out.get(key), str):
            out[key] = [{"role": "assistant", "content": out[key]}]
    return out


def validate_group(row: dict, scale: tuple[float, float] | None = None) -> None:
    """A GRPO row {prompt, completions: [N >= 2 replies], scores: [N numbers]}; `scale`: (low, high) the
    scores must lie in (the person's 1-5), else any finite number (a reward function's)."""
    import math

    missing = [key for key in ("prompt", "completions", "scores") if key not in row]
    if missing:
        raise DataError(f"missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)} for grpo data")
    prompt, completions, scores = row["prompt"], row["completions"], row["scores"]
    if isinstance(prompt, list):
        check_messages(prompt, "prompt")
    elif not isinstance(prompt, str):
        raise DataError(f"prompt must be a string or a list of messages, got {type(prompt).__name__}")
    if not isinstance(completions, list) or len(completions) < 2:
        raise DataError("completions must be a list of at least 2 replies (a group)")
    for number, completion in enumerate(completions, 1):
        if isinstance(completion, list):
            check_messages(completion, f"completion {number}")
        elif not isinstance(completion, str) or not completion:
            raise DataError(f"completion {number} must be a non-empty string or a list of messages")
    if not isinstance(scores, list) or len(scores) != len(completions):
        raise DataError(f"scores must be a list of {len(completions)} numbers, one per completion")
    for number, score in enumerate(scores, 1):
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise DataError(f"score {number} must be a finite number, got {score!r}")
        if scale is not None and not scale[0] <= score <= scale[1]:
            raise DataError(f"score {number} is {score!r}: outside the {scale[0]:g}-{scale[1]:g} scale")


def split_messages(row: dict) -> dict:
    """An SFT `{messages}` row as `{prompt, completion}`: the last reply is the completion."""
    if "messages" in row:
        return {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}
    return row


def tokenize_pair(tokenizer, prompt, completions: list, max_length: int | None = None) -> tuple[list[int], list[list[int]]]:
    """(prompt_ids, [completion_ids...]) for one prompt and its completions, as TRL does."""
    if isinstance(prompt, list):
        prompt_ids = chat_ids(tokenizer, prompt, add_generation_prompt=True)
        fulls = [chat_ids(tokenizer, prompt + completion) for completion in completions]
    else:
        eos = tokenizer.eos_token or ""
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        fulls = [
            tokenizer(prompt + c + ("" if c.endswith(eos) else eos), add_special_tokens=False)["input_ids"]
            for c in completions
        ]
    # The completion starts where prompt and prompt+completion diverge (tokens can merge).
    start = min(_common_prefix(prompt_ids, full) for full in fulls)
    return truncate(prompt_ids[:start], [full[start:] for full in fulls], max_length)


def truncate(prompt_ids: list[int], completion_ids: list[list[int]], max_length: int | None):
    """Each prompt+completion cut to `max_length` tokens, completion first (the end of a too-long prompt stays)."""
    if max_length is not None:
        room = max(max_length - len(prompt_ids), 1)
        if len(prompt_ids) >= max_length:  # keep the end of a too-long prompt: the completion must fit
            prompt_ids = prompt_ids[-(max_length - 1):]
        completion_ids = [ids[:room] for ids in completion_ids]
    return prompt_ids, completion_ids


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def collate(sequences: list[tuple[list[int], list[int]]], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """Right-pad (prompt_ids, completion_ids) pairs into input_ids, attention_mask, completion_mask."""
    width = max(len(p) + len(c) for p, c in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    completion_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, (prompt, completion) in enumerate(sequences):
        ids = prompt + completion
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        completion_mask[i, len(prompt): len(ids)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}
    return {k: v.to(device) for k, v in batch.items()} if device is not None else batch


def preference_batch(tokenizer, examples: list[dict], max_length: int | None, device=None) -> dict[str, torch.Tensor]:
    """One batch holding every chosen sequence, then every rejected one: one forward for both."""
    chosen, rejected = [], []
    for ex in examples:
        prompt_ids, (c, r) = tokenize_pair(tokenizer, ex["prompt"], [ex["chosen"], ex["rejected"]], max_length)
        chosen.append((prompt_ids, c))
        rejected.append((prompt_ids, r))
    return collate(chosen + rejected, tokenizer.pad_token_id, device)


MAX_REPLIES_PER_ROW = 8  # replies sharing one packed row: bounds its attention mask (T x T)


def packed_groups(tokenizer, examples: list[dict], max_length: int | None, device=None):
    """Preference pairs packed by prompt: one row holds a prompt once, then each distinct reply of
    the pairs on it. Returns (batch, index): `index[k]` is pair k's (row, chosen segment, rejected
    segment).

    A live pick of the best of 4 is 3 pairs with one prompt and one chosen reply: as 3 pair rows it
    runs the prompt and the chosen reply 3 times, as one row once (0.56x the tokens on the default
    model's chats). `segments` marks the prompt (0), reply s (s >= 1) and padding (-1); each reply
    attends to the prompt and itself only, and its positions restart after the prompt, so it is
    scored exactly as if it followed the prompt alone (engine.logprobs.pair_token_logps). Pairs are
    grouped only where that holds for the pair's own tokenization: a chat prompt whose token ids
    every reply extends (a plain-text prompt can merge tokens with the reply) stays a row per pair.
    """
    rows: list[tuple[list[int], list[list[int]], dict[str, int]]] = []  # prompt ids, replies, reply key -> segment
    open_rows: dict[str, int] = {}  # chat prompt key -> the row still taking its replies
    index = []
    for ex in examples:
        replies = [ex["chosen"], ex["rejected"]]
        keys = [json.dumps(r, sort_keys=True) for r in replies]
        prompt_key = json.dumps(ex["prompt"], sort_keys=True) if isinstance(ex["prompt"], list) else None
        row = open_rows.get(prompt_key)
        if row is not None and _join(tokenizer, rows[row], ex["prompt"], dict(zip(keys, replies)), max_length):
            index.append((row, rows[row][2][keys[0]], rows[row][2][keys[1]]))
            continue
        alone = _replies_alone(tokenizer, ex["prompt"], replies, max_length) if prompt_key and keys[0] != keys[1] else None
        if alone is None:  # the pair's own tokenization, on a row of its own
            prompt_ids, (chosen, rejected) = tokenize_pair(tokenizer, ex["prompt"], replies, max_length)
        else:
            (prompt_ids, (chosen, rejected)), open_rows[prompt_key] = alone, len(rows)
        index.append((len(rows), 1, 2))
        rows.append((prompt_ids, [chosen, rejected], {keys[0]: 1, keys[1]: 2}))
    batch = pack([(p, *replies) for p, replies, _ in rows], tokenizer.pad_token_id, device)
    return batch, torch.tensor(index, dtype=torch.long, device=device).reshape(-1, 3)


def _replies_alone(tokenizer, prompt: list, replies: list, max_length: int | None, prompt_ids: list[int] | None = None):
    """(prompt ids, each reply's ids after them), each reply tokenized alone with the chat prompt; None where
    one does not extend the same prompt ids (`prompt_ids`, else the first reply's): its ids would then
    depend on the reply it is paired with."""
    out = []
    for reply in replies:
        ids, (completion,) = tokenize_pair(tokenizer, prompt, [reply], max_length)
        if prompt_ids is None:
            prompt_ids = ids
        elif ids != prompt_ids:
            return None
        out.append(completion)
    return prompt_ids, out


def _join(tokenizer, row, prompt: list, replies: dict, max_length: int | None) -> bool:
    """Add a pair's replies new to an open row (`replies`: key -> reply); False if they do not fit it."""
    prompt_ids, row_replies, segment_of = row
    new = {k: r for k, r in replies.items() if k not in segment_of}
    if len(row_replies) + len(new) > MAX_REPLIES_PER_ROW:
        return False
    tokenized = _replies_alone(tokenizer, prompt, list(new.values()), max_length, prompt_ids) if new else (prompt_ids, [])
    if tokenized is None:
        return False
    for k, ids in zip(new, tokenized[1]):
        segment_of[k] = len(row_replies) + 1
        row_replies.append(ids)
    return True


def kto_rows(tokenizer, examples: list[dict], max_length: int | None) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, completion, mismatched completion) token ids per KTO row, as TRL builds them.

    The mismatched completion, on which KTO estimates its KL reference point, is the previous
    row's (the first row takes the last one's): TRL's rotation by one within a batch. Each
    completion keeps the tokens it had after its own prompt.
    """
    tokenized = [tokenize_pair(tokenizer, ex["prompt"], [ex["completion"]]) for ex in examples]
    rows = []
    for i, (prompt_ids, (completion,)) in enumerate(tokenized):
        prompt_ids, (completion, mismatched) = truncate(prompt_ids, [completion, tokenized[i - 1][1][0]], max_length)
        rows.append((prompt_ids, completion, mismatched))
    return rows


def pack(rows: list[tuple[list[int], ...]], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """(prompt, reply 1, reply 2, ...) token ids as packed rows: see packed_groups."""
    width = max(sum(map(len, row)) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, (p, *replies) in enumerate(rows):
        n = len(p) + sum(map(len, replies))
        input_ids[i, :n] = torch.tensor([*p, *(t for r in replies for t in r)])
        position_ids[i, :n] = torch.tensor([*range(len(p)), *(q for r in replies for q in range(len(p), len(p) + len(r)))])
        segments[i, :n] = torch.tensor([0] * len(p) + [s for s, r in enumerate(replies, 1) for _ in r])
    batch = {"input_ids": input_ids, "position_ids": position_ids, "segments": segments}
    return {k: v.to(device) for k, v in batch.items()} if device is not None else batch


def sft_batch(tokenizer, examples: list[dict], max_length: int | None, device=None) -> dict[str, torch.Tensor]:
    sequences = []
    for ex in map(split_messages, examples):
        prompt_ids, (completion,) = tokenize_pair(tokenizer, ex["prompt"], [ex["completion"]], max_length)
        sequences.append((prompt_ids, completion))
    return collate(sequences, tokenizer.pad_token_id, device)
