"""Cost by model size, through the engine process, against the hardware's limits.

For each size, a randomly initialised model of a real architecture's dimensions (written
from the published configs: speed does not depend on the weights' values) is saved
with the default model's tokenizer and served by the real engine (`python -m engine serve`
through tui_align.client.EngineClient, as the TUI uses it). Measured per size:
  - decode ms/step for n = 1, 2, 4, 8 candidates, and time to first token (n = 1);
  - a one-pair live DPO update, its reference log-probs precomputed by score_reference
    (what the live loop does while the person reads), and an 8-pair update;
  - the engine's peak memory (status: resident set; accelerator memory on a GPU).
In the same run, the limits: memory-copy bandwidth (a torch tensor copy) and matmul
throughput (torch.mm), both with the engine's thread count. Then
  - decode bound = bytes read per step (every weight once, the LoRA adapter, the KV cache) / bandwidth;
  - update bound = FLOPs (4 x matmul parameters x tokens: a forward and, the base frozen,
    a backward of the same size for the input gradients) / matmul throughput;
and each figure is reported as a fraction of its bound (1.0 = at the hardware's limit).
The matrix products of a step alone (`linear_floor`, n = 1 and 8, same thread count) tell
the BLAS's share of a decoding step from the rest (Python, attention, sampling).

The sizes and their random models: bench/scale_models.py; the limits: bench/hardware_limits.py.

    flock /tmp/bench.lock .venv/bin/python bench/scale.py --sizes 135m,360m --device cpu
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the engine sets for itself
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hardware_limits import limits, linear_floor  # noqa: E402  (bench/ is on sys.path when run as a script)
from scale_models import NAMES, SIZES, build, config_of, kv_dim, lora_parameters, matmul_parameters  # noqa: E402
from tui_align.client import EngineClient  # noqa: E402

CANDIDATES = (1, 2, 4, 8)
PROMPT = [{"role": "user", "content": "Write a long, detailed story about a lighthouse keeper and a storm."}]
QUESTIONS = ["What is the capital of France?", "Give me a tip for sleeping better.", "Why is the sky blue?",
             "Name three fruits.", "How do I boil an egg?", "What is a prime number?", "Say something kind.",
             "What is 12 times 12?"]
CHOSEN = ("Paris is the capital of France. It lies on the Seine, in the north of the country, and is home "
          "to about two million people; the wider metropolitan area holds around twelve million.")
REJECTED = "I am not sure. It might be Lyon, or maybe Marseille; you should look it up somewhere else."


# --- measuring through the engine -------------------------------------------------------

async def generate(client: EngineClient, n: int, tokens: int, seed: int) -> dict:
    async for event in client.generate(PROMPT, n=n, max_new_tokens=tokens, seed=seed):
        if event["type"] == "done":
            return event


def step_seconds(done: dict) -> float:
    """Seconds per decoding step after the first token, from the longest candidate's timings."""
    cand = max(done["candidates"], key=lambda c: c["tokens"])
    last = cand["tokens"] / cand["tokens_per_s"]  # generation start to its last token
    return (last - cand["ttft_s"]) / max(1, cand["tokens"] - 1)


def pairs(count: int, offset: int) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": QUESTIONS[(offset + i) % len(QUESTIONS)]}],
             "chosen": CHOSEN, "rejected": REJECTED} for i in range(count)]


async def update_seconds(client: EngineClient, scored: list[dict]) -> float:
    """Seconds from an update request to its new version, the pairs' reference log-probs already scored."""
    started = time.perf_counter()
    await client.update("dpo", scored)
    return time.perf_counter() - started


async def measure(folder: Path, args) -> dict:
    client = EngineClient(model=str(folder), device=args.device, dtype=args.dtype_name)
    try:
        await client.start()
        info = dict(client.info)
        await generate(client, 2, 8, 0)  # warm-up: first calls allocate and pick kernels
        decode = {n: [] for n in CANDIDATES}
        ttft = []
        for repeat in range(args.repeats):  # the sizes alternate: drift in the machine's load hits each
            for n in CANDIDATES:
                done = await generate(client, n, args.tokens, 1 + repeat)
                decode[n].append(step_seconds(done))
                if n == 1:
                    ttft.append(done["candidates"][0]["ttft_s"])
        await update_seconds(client, await client.score_reference(pairs(1, 0)))  # warm-up update, not counted
        one = []
        for repeat in range(args.repeats):
            scored = await client.score_reference(pairs(1, repeat + 1))  # while the person reads: not timed
            one.append(await update_seconds(client, scored))
        window = await client.score_reference(pairs(8, 0))
        eight = [await update_seconds(client, window) for _ in range(max(1, args.repeats // 2))]
        status = await client.status()
    finally:
        await client.close()
    return {"info": info, "decode_s": {n: statistics.median(v) for n, v in decode.items()},
            "ttft_s": statistics.median(ttft), "one_pair_s": statistics.median(one),
            "eight_pairs_s": statistics.median(eight), "peak_rss_bytes": status.get("peak_rss_bytes"),
            "peak_accelerator_bytes": status.get("peak_accelerator_bytes")}


def update_tokens(tokenizer, rows: list[dict]) -> tuple[int, int]:
    """(all tokens, completion tokens) of the policy's forward on these pairs, as the DPO trainer packs them."""
    from engine.data import tokenize_pair
    from engine.live import conversational

    total = completion = 0
    for row in map(conversational, rows):
        prompt_ids, completions = tokenize_pair(tokenizer, row["prompt"], [row["chosen"], row["rejected"]], 512)
        total += 2 * len(prompt_ids) + sum(map(len, completions))
        completion += sum(map(len, completions))
    return total, completion


def bounds(size: str, result: dict, limit: dict, dtype, tokenizer, tokens: int) -> dict:
    """The hardware's lower bounds on each figure, from the model's shape and the limits."""
    config = config_of(size)
    decoder, head = matmul_parameters(config)
    element = dtype.itemsize
    kv_width = 2 * config.num_hidden_layers * kv_dim(config)  # keys and values, every layer
    prompt_tokens = len(tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True))
    lora = result["lora_bytes"]
    decode = {}
    for n in CANDIDATES:  # every weight is read once per step, whatever n; each row reads its own cache
        cache = n * kv_width * (prompt_tokens + tokens / 2) * element
        decode[n] = ((decoder + head) * element + lora + cache) / limit["bandwidth"]
    updates = {}
    for name, count in (("one_pair_s", 1), ("eight_pairs_s", 8)):
        total, completion = update_tokens(tokenizer, pairs(count, 0))
        updates[name] = (4 * decoder * total + 4 * head * completion) / limit["matmul"]
    return {"decode_s": decode, **updates}


# --- output -----------------------------------------------------------------------------

def table(rows: list[dict]) -> str:
    lines = ["| size | parameters | dtype | copy GB/s, matmul TFLOP/s | decode ms/step n=1 / 2 / 4 / 8 | n=8 / n=1 "
             "| decode n=1 vs bound | ttft ms | 1-pair update s (vs bound) | 8-pair update s (vs bound) | peak memory GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d, b = r["decode_s"], r["bound"]
        memory = r["peak_accelerator_bytes"] if r["peak_accelerator_bytes"] else r["peak_rss_bytes"]
        lines.append(
            f"| {NAMES[r['size']]} | {r['info']['parameters'] / 1e6:.0f}M | {r['info']['dtype']} "
            f"| {r['limits']['bandwidth'] / 1e9:.1f}, {r['limits']['matmul'] / 1e12:.3f} "
            f"| {' / '.join(f'{1000 * d[n]:.1f}' for n in CANDIDATES)} | {d[8] / d[1]:.2f}x "
            f"| {b['decode_s'][1] / d[1]:.0%} | {1000 * r['ttft_s']:.0f} "
            f"| {r['one_pair_s']:.3f} ({b['one_pair_s'] / r['one_pair_s']:.0%}) "
            f"| {r['eight_pairs_s']:.3f} ({b['eight_pairs_s'] / r['eight_pairs_s']:.0%}) "
            f"| {memory / 1e9:.2f}{' (GPU)' if r['peak_accelerator_bytes'] else ' (RSS)'} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> str:
    try:
        import matplotlib
    except ImportError:
        return "no plot: matplotlib is not installed (pip install 'tui-align[plot]')"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = [r["info"]["parameters"] for r in rows]
    figure, axis = plt.subplots(figsize=(7, 4.5))
    series = [("decode ms/step, n=1", lambda r: 1000 * r["decode_s"][1], "o-"),
              ("decode ms/step, n=8", lambda r: 1000 * r["decode_s"][8], "s-"),
              ("decode bound (bandwidth)", lambda r: 1000 * r["bound"]["decode_s"][1], "o:"),
              ("1-pair update ms", lambda r: 1000 * r["one_pair_s"], "^-"),
              ("8-pair update ms", lambda r: 1000 * r["eight_pairs_s"], "v-"),
              ("1-pair update bound (matmul)", lambda r: 1000 * r["bound"]["one_pair_s"], "^:")]
    for label, value, style in series:
        axis.plot(params, [value(r) for r in rows], style, label=label)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("parameters")
    axis.set_ylabel("milliseconds")
    device = rows[0]["info"]["device"]
    axis.set_title(f"Cost by model size ({device}, {rows[0]['info']['dtype']})")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return f"plot: {path}"


def goals(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        d = r["decode_s"]
        lines.append(f"- {NAMES[r['size']]}: decoding n=1 at {r['bound']['decode_s'][1] / d[1]:.0%} of the bandwidth "
                     f"bound (goal >= 60%); n=8 {d[8] / d[1]:.2f}x n=1 per step (goal <= 1.3x); one-pair update "
                     f"{1000 * r['one_pair_s']:.0f} ms")
        floor = r.get("floor_s")
        if floor:  # the matrix products alone: how much of the gap is the BLAS, how much the rest of the step
            lines.append(f"  - the matrix products alone (linear_floor): n=1 {1000 * floor[1]:.1f} ms "
                         f"({r['bound']['decode_s'][1] / floor[1]:.0%} of the bound), n=8 {1000 * floor[8]:.1f} ms "
                         f"({floor[8] / floor[1]:.2f}x n=1); the step spends {floor[1] / d[1]:.0%} (n=1) and "
                         f"{floor[8] / d[8]:.0%} (n=8) of its time in them")
    return "\n".join(lines)


def load_runs(paths: list[Path]) -> list[dict]:
    """The rows of runs saved with --json, smallest model first."""
    rows = sorted((row for path in paths for row in json.loads(path.read_text())), key=lambda r: r["info"]["parameters"])
    for row in rows:  # JSON keys are strings
        row["decode_s"] = {int(n): v for n, v in row["decode_s"].items()}
        row["bound"]["decode_s"] = {int(n): v for n, v in row["bound"]["decode_s"].items()}
        if "floor_s" in row:
            row["floor_s"] = {int(n): v for n, v in row["floor_s"].items()}
    return rows


def measure_size(size: str, root: Path, args, dtype, tokenizer) -> dict:
    """Build `size` (unless --keep holds it), measure the limits just before it, then it through the engine."""
    from engine.resources import engine_threads

    folder = root / size
    if not (folder / "config.json").exists():
        started = time.perf_counter()
        build(size, folder, dtype, tokenizer, args.device)
        print(f"{size}: built in {time.perf_counter() - started:.0f} s", flush=True)
    # the limits again for every size, just before it: on a shared machine they drift
    limit = limits(args.device, dtype, engine_threads())
    print(f"limits ({args.device}, {limit['threads']} thread(s)): copy bandwidth "
          f"{limit['bandwidth'] / 1e9:.1f} GB/s, matmul {limit['matmul'] / 1e12:.3f} TFLOP/s ({args.dtype_name})",
          flush=True)
    result = {"size": size, **asyncio.run(measure(folder, args)), "limits": limit}
    result["lora_bytes"] = 4 * lora_parameters(config_of(size))  # the adapter is float32
    result["bound"] = bounds(size, result, limit, dtype, tokenizer, args.tokens)
    result["floor_s"] = {n: linear_floor(size, args.device, dtype, n) for n in (1, 8)}  # the limits' thread count
    print(table([result]).splitlines()[-1], flush=True)
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="135m,360m,0.5b,1.5b,1.7b",
                        help=f"comma-separated, from {', '.join(SIZES)}")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the engine runs")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="auto: bfloat16 on a GPU or a CPU with native bf16, else float32")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per candidate")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each figure (medians are reported)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the default model's)")
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("scale.png"), help="PNG to write")
    parser.add_argument("--markdown", type=Path, default=None, help="also append the table to this file")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    parser.add_argument("--keep", type=Path, default=None, help="keep the built models in this folder")
    parser.add_argument("--from-json", type=Path, nargs="+", default=None,
                        help="measure nothing: print the table and draw the plot of runs saved with --json")
    args = parser.parse_args()
    if args.from_json:
        rows = load_runs(args.from_json)
        print(table(rows) + "\n\n" + goals(rows))
        print(plot(rows, args.plot))
        return
    sizes = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or not sizes:
        parser.error(f"--sizes {args.sizes}: unknown {', '.join(unknown) or 'nothing'}; choose from {', '.join(SIZES)}")

    import torch

    from engine.models import cpu_has_bf16, load_tokenizer, pick_device, pick_dtype

    args.device = pick_device(args.device)
    if args.dtype == "auto":
        dtype = pick_dtype("auto", args.device, stored=torch.bfloat16)
        print(f"dtype auto: {dtype} (device {args.device}, native CPU bf16: {cpu_has_bf16()})")
    else:
        dtype = pick_dtype(args.dtype, args.device)
    args.dtype_name = str(dtype).removeprefix("torch.")
    tokenizer = load_tokenizer(args.tokenizer)
    root = Path(tempfile.mkdtemp(prefix="tui-align-scale-")) if args.keep is None else args.keep
    try:
        rows = [measure_size(size, root, args, dtype, tokenizer) for size in sizes]
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    header = (f"bench/scale.py on {args.device} ({rows[0]['info']['dtype']}), {args.tokens} new tokens per candidate, "
              f"medians of {args.repeats}; limits measured before each size with {rows[-1]['limits']['threads']} thread(s)")
    text = header + "\n\n" + table(rows) + "\n\n" + goals(rows)
    print()
    print(text)
    print(plot(rows, args.plot))
    if args.markdown:
        with args.markdown.open("a") as out:
            out.write(text + "\n\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
