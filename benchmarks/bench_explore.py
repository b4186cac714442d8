"""Benchmark of exploration, on one engine in one run:

(a) a sequential STE loop, one episode at a time (as the reference implementation runs);
(b) ste-ray (Ray actors, many episodes in flight) at each ``in_flight`` level;
(c) the raw engine at the same concurrency, with prompts and outputs of the same average lengths
    (closed-loop load, no tools, no parsing): the ceiling (b) can approach;
(r) the raw engine replaying (b)'s own model requests (the same conversations, each reply's
    length forced with ``ignore_eos``, each episode's requests in order, as many episodes at once):
    the same model work without ste-ray's actors, tools, parsing or constrained decoding.

Reports episodes/min and output tokens/s; the goals are (b at the highest level) ÷ (a) ≥ 8 and
(b) ÷ (c) ≥ 0.85. Every raw run salts vLLM's prefix cache, so none reuses another's cached prompts;
structured-output grammars are compiled before (a), so (a) does not pay for them alone.

    python benchmarks/bench_explore.py
"""

import asyncio
import dataclasses
import json
import logging
import platform
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
from loadgen import filler_words_for, run_load

from ste_ray.config import fail, job_config, option, to_dict
from ste_ray.constrained import REFLECTION_REGEX, grammar_request, regex_request, turn_grammar
from ste_ray.engine import EngineConfig, model_endpoint
from ste_ray.explore import ExploreSettings, run_exploration
from ste_ray.explore.episode import EpisodeTask, run_episode
from ste_ray.report import format_table
from ste_ray.runtime import RayConfig, ray_cluster
from ste_ray.schema import Episode, read_dir
from ste_ray.tools.calls import ToolBox, ToolCallConfig
from ste_ray.tools.sources import select_tools


@dataclasses.dataclass
class BenchExploreConfig:
    """Sequential STE loop vs ste-ray vs the raw engine."""

    ray: RayConfig = option(default_factory=RayConfig, help="Ray connection")
    engine: EngineConfig = option(default_factory=EngineConfig, help="The explorer endpoint")
    explore: ExploreSettings = option(
        default_factory=lambda: ExploreSettings(num_stm_slots=1, max_turn=2, turn_max_tokens=96, query_max_tokens=48),
        help="Episode settings shared by every variant")
    in_flight: list[int] = option(default_factory=lambda: [8, 32], help="Episodes in flight for (b) and (c)")
    sequential_episodes: int = option(16, help="Episodes of the sequential loop (a)")
    episodes_per_slot: int = option(4, help="Episodes of (b) per in-flight slot (more: less ramp-down in the measurement)")
    output: str = option("results/bench_explore.json", help="Where the JSON results go")
    profile_s: float = option(60.0, help="Sample the exploration actors with py-spy for this many seconds "
                                         "during (b) at the highest level (0: no profile)")

    def validate(self) -> None:
        if not self.in_flight or min(self.in_flight) < 1:
            fail("in_flight", "needs positive levels")
        if self.profile_s < 0:
            fail("profile_s", "must be >= 0")


async def warm_up(endpoint, specs, settings) -> None:
    """Compile every constrained-decoding grammar the episodes use (xgrammar caches them)."""
    if not settings.constrained:
        return
    async with endpoint.client(max_concurrency=8) as llm:
        ask = lambda extra: llm.chat([{"role": "user", "content": "Go."}], max_tokens=2, extra_body=extra)
        await asyncio.gather(ask(regex_request(REFLECTION_REGEX)),
                             *(ask(grammar_request(turn_grammar([(s.name, s.parameters)]))) for s in specs))


async def sequential(endpoint, specs, settings, n) -> dict:
    tools = ToolBox(specs, ToolCallConfig(scope="bench-seq"))
    async with endpoint.client(max_concurrency=1) as llm:
        started = time.perf_counter()
        for i in range(n):
            spec = specs[i % len(specs)]
            await run_episode(llm, tools, spec, EpisodeTask("seq", spec.name, i, []), settings)
        wall = time.perf_counter() - started
    tools.shutdown()
    u = llm.usage
    return {"episodes": n, "wall_s": round(wall, 2), "episodes_per_min": round(60 * n / wall, 2),
            "output_tokens_per_s": round(u.completion_tokens / wall, 2),
            "prompt_tokens_per_request": u.prompt_tokens / u.requests,
            "output_tokens_per_request": u.completion_tokens / u.requests}


async def concurrent(endpoint, specs, settings, level, episodes, profile_s: float, profile_dir: Path) -> dict:
    per_api = -(-episodes // len(specs))
    run_settings = dataclasses.replace(settings, num_episodes=per_api, episodes_in_flight=level, max_in_flight=level)
    with tempfile.TemporaryDirectory() as out:
        exploration = asyncio.ensure_future(run_exploration(
            endpoint, specs, run_settings, ToolCallConfig(scope=f"bench-{level}"), Path(out), f"bench{level}",
            progress=False))
        profile = await profile_explorers(profile_s, profile_dir) if profile_s else None
        result = await exploration
        episodes = read_dir(Path(out) / "episodes", Episode)
        busy = sum(episodes.column("latency_s").to_pylist())
        at_model = sum(episodes.column("model_latency_s").to_pylist())
        conversations = episodes.select(["episode_index", "api", "conversation", "completion_tokens_per_request"])
    n = result.episodes_done
    row = {"in_flight": level, "episodes": n, "wall_s": round(result.elapsed_s, 2),
           # Σ episode time ÷ wall time: how many episodes were really running, on average.
           "mean_episodes_in_flight": round(busy / result.elapsed_s, 2),
           # Of the episodes' time, the share spent outside model requests (tools, parsing, scheduling).
           "share_outside_model": round(1 - at_model / busy, 4),
           "episodes_per_min": round(60 * n / result.elapsed_s, 2),
           "output_tokens_per_s": round(result.completion_tokens / result.elapsed_s, 2),
           "failures": len(result.failures)}
    return row | ({"profile": profile} if profile else {}), sorted(
        conversations.to_pylist(), key=lambda e: (e["episode_index"], e["api"]))


async def replay(endpoint, episodes: list[dict], level: int) -> dict:
    """(r): each episode's model requests again, in order, ``level`` episodes at a time."""
    chains = []
    for e in episodes:
        messages = json.loads(e["conversation"])
        prompts = [messages[:i] for i, m in enumerate(messages) if m["role"] == "assistant"]
        chains.append(list(zip(prompts, e["completion_tokens_per_request"], strict=True)))
    salt = uuid.uuid4().hex
    slots = asyncio.Semaphore(level)
    async with endpoint.client(max_concurrency=level, max_retries=0) as llm:
        async def episode(chain):
            async with slots:
                for prompt, n in chain:
                    # min_tokens too: with ignore_eos alone a zero-length reply would still be one token.
                    await llm.chat(prompt, max_tokens=max(n, 1), temperature=1.0,
                                   extra_body={"ignore_eos": True, "min_tokens": max(n, 1), "cache_salt": salt})

        started = time.perf_counter()
        await asyncio.gather(*(episode(c) for c in chains))
        wall = time.perf_counter() - started
    return {"episodes": len(chains), "requests": llm.usage.requests, "wall_s": round(wall, 2),
            "output_tokens_per_s": round(llm.usage.completion_tokens / wall, 2)}


async def profile_explorers(seconds: float, out_dir: Path) -> dict:
    """py-spy on every exploration actor process (Ray titles them ``ray::ExplorerActor``) for
    ``seconds``: the share of the time each was on a CPU, and the functions that time went to."""
    deadline = time.monotonic() + 60
    while not (pids := [p.pid for p in psutil.process_iter(["cmdline"])
                        if "ray::ExplorerActor" in " ".join(p.info["cmdline"] or [])]):
        if time.monotonic() > deadline:
            raise RuntimeError("no exploration actor process appeared to profile")
        await asyncio.sleep(0.2)
    out_dir.mkdir(parents=True, exist_ok=True)
    rate = 100
    spies = [await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--duration", str(int(seconds)),
        "--rate", str(rate), "--nonblocking", "--format", "raw", "--output", str(out_dir / f"explorer-{pid}.txt"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE) for pid in pids]
    for spy in spies:
        _, err = await spy.communicate()
        if spy.returncode:  # e.g. no ptrace permission in a container: the benchmark goes on without
            return {"error": f"py-spy failed: {err.decode().strip()[-300:]}"}
    # Raw format: one line per distinct stack, "frame;frame;...;leaf count"; without --idle only
    # samples of a thread on a CPU are kept, so samples ÷ (rate × seconds) is the CPU share.
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for path in out_dir.glob("explorer-*.txt"):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            # "function (path/file.py:line)" → "function (file.py)"
            frames = [re.sub(r"\((?:.*/)?([^/:]+)(?::\d+)?\)$", r"(\1)", f) for f in stack.split(";")]
            total += int(count)
            own[frames[-1]] = own.get(frames[-1], 0) + int(count)
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + int(count)
    top = lambda d: [[f, round(n / total, 3)] for f, n in sorted(d.items(), key=lambda kv: -kv[1])[:12]]
    return {"actors": len(pids), "seconds": seconds,
            "cpu_share_per_actor": round(total / (rate * seconds * len(pids)), 3),
            "top_own": top(own), "top_inclusive": top(inclusive), "stacks": str(out_dir)}


PROCESS_KINDS = [("ExplorerActor", "explorer actors"), ("ToolCallActor", "tool-call actors"),
                 ("ProxyActor", "Serve proxy"), ("OpenAiIngress", "Serve ingress"), ("LLMServer", "Serve engine replica"),
                 ("VLLM", "vLLM engine"), ("bench_explore", "driver")]


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by each kind of process alive on this machine (Ray names its
    workers' process titles after the actor class, vLLM its engine processes). Processes that end
    during a run (the exploration actors) are not in it."""
    totals: dict[str, float] = {}
    for proc in psutil.process_iter(["cmdline", "name", "cpu_times"]):
        title = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["name"] or "")
        kind = next((label for key, label in PROCESS_KINDS if key in title), "other")
        times = proc.info["cpu_times"]
        if times:
            totals[kind] = totals.get(kind, 0.0) + times.user + times.system
    return totals


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after.get(k, 0) - before.get(k, 0), 1) for k in sorted(after) if after.get(k, 0) - before.get(k, 0) > 0.05}


async def run(endpoint, cfg: BenchExploreConfig) -> dict:
    specs, _ = select_tools(["ste"], [])
    await warm_up(endpoint, specs, cfg.explore)
    print("(a) sequential STE loop ...", flush=True)
    seq = await sequential(endpoint, specs, cfg.explore, cfg.sequential_episodes)
    filler = await filler_words_for(endpoint, seq["prompt_tokens_per_request"])
    output_tokens = max(1, round(seq["output_tokens_per_request"]))
    print("(c) raw engine, 1 request in flight ...", flush=True)
    single = await run_load(endpoint, 1, 8, output_tokens, filler_words=filler)
    rows = []
    for level in cfg.in_flight:
        print(f"(b) ste-ray, {level} episodes in flight ...", flush=True)
        before = cpu_seconds()
        profile_s = cfg.profile_s if level == max(cfg.in_flight) else 0
        ours, episodes = await concurrent(endpoint, specs, cfg.explore, level, level * cfg.episodes_per_slot,
                                          profile_s, Path(cfg.output).with_suffix("") / "profile")
        ours["cpu_seconds_by_process"] = cpu_used(before, cpu_seconds())
        print(f"(c) raw engine, {level} requests in flight ...", flush=True)
        before = cpu_seconds()
        raw = await run_load(endpoint, level, level * 4, output_tokens, filler_words=filler)
        raw["cpu_seconds_by_process"] = cpu_used(before, cpu_seconds())
        print(f"(r) raw engine replaying (b)'s requests, {level} episodes at a time ...", flush=True)
        before = cpu_seconds()
        replayed = await replay(endpoint, episodes, level)
        replayed["cpu_seconds_by_process"] = cpu_used(before, cpu_seconds())
        rows.append({"in_flight": level, "ste_ray": ours, "raw_engine": raw, "replay": replayed,
                     "speedup_over_sequential": round(ours["episodes_per_min"] / seq["episodes_per_min"], 2),
                     "tokens_ratio_ste_ray_over_raw": round(ours["output_tokens_per_s"] / raw["output_tokens_per_s"], 3),
                     "tokens_ratio_ste_ray_over_replay": round(
                         ours["output_tokens_per_s"] / replayed["output_tokens_per_s"], 3)})
    return {"sequential": seq, "raw_engine_single": single, "levels": rows}


def engine_seconds_per_token(run: dict) -> float:
    """vLLM engine CPU seconds per output token: how much engine work each token of a variant cost."""
    return run["cpu_seconds_by_process"].get("vLLM engine", 0) / (run["output_tokens_per_s"] * run["wall_s"])


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    cfg = job_config(BenchExploreConfig)
    with ray_cluster(cfg.ray), model_endpoint(cfg.engine) as endpoint:
        results = asyncio.run(run(endpoint, cfg))
    results = {"benchmark": "explore", "machine": {"cpus": psutil.cpu_count(), "platform": platform.platform()},
               "config": to_dict(cfg)} | results
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.output).write_text(json.dumps(results, indent=2))
    seq, single = results["sequential"], results["raw_engine_single"]
    table = [["(a) sequential", 1, seq["episodes"], seq["episodes_per_min"], seq["output_tokens_per_s"], "", "", "", 1],
             ["(c) raw engine", 1, single["requests"], "", single["output_tokens_per_s"], "", "", "", 1]]
    for r in results["levels"]:
        table.append(["(b) ste-ray", r["in_flight"], r["ste_ray"]["episodes"], r["ste_ray"]["episodes_per_min"],
                      r["ste_ray"]["output_tokens_per_s"], r["speedup_over_sequential"],
                      r["tokens_ratio_ste_ray_over_raw"], r["tokens_ratio_ste_ray_over_replay"],
                      r["ste_ray"]["mean_episodes_in_flight"]])
        table.append(["(c) raw engine", r["in_flight"], r["raw_engine"]["requests"], "",
                      r["raw_engine"]["output_tokens_per_s"], "", "", "", r["in_flight"]])
        table.append(["(r) replay of (b)", r["in_flight"], r["replay"]["episodes"], "",
                      r["replay"]["output_tokens_per_s"], "", "", "", ""])
    print()
    print(format_table(["variant", "in flight", "episodes/requests", "episodes/min", "output tok/s",
                        "÷ (a) episodes/min", "(b) ÷ (c) tok/s", "(b) ÷ (r) tok/s", "mean in flight"], table))
    print(f"the engine alone, 1 → {results['levels'][-1]['in_flight']} requests in flight: "
          f"{results['levels'][-1]['raw_engine']['output_tokens_per_s'] / single['output_tokens_per_s']:.2f}× "
          "the output tokens/s")
    for r in results["levels"]:
        print(f"at {r['in_flight']} in flight, episodes spent {100 * r['ste_ray']['share_outside_model']:.1f} % "
              "of their time outside model requests; vLLM engine CPU ms per output token: " + ", ".join(
                  f"{name} {1000 * engine_seconds_per_token(r[key]):.2f}"
                  for name, key in (("(b)", "ste_ray"), ("(c)", "raw_engine"), ("(r)", "replay"))))
        if (profile := r["ste_ray"].get("profile")) and "error" in profile:
            print(f"no profile: {profile['error']}")
        elif profile:
            print(f"py-spy, {profile['actors']} exploration actors over {profile['seconds']:g} s: each on a CPU "
                  f"{100 * profile['cpu_share_per_actor']:.1f} % of the time; where (share of samples, "
                  f"inclusive): " + "; ".join(f"{f} {100 * n:.0f} %" for f, n in profile["top_inclusive"][:8]))
        for name in ("ste_ray", "raw_engine", "replay"):
            wall = r[name]["wall_s"]
            usage = ", ".join(f"{k} {v / wall:.2f}" for k, v in r[name]["cpu_seconds_by_process"].items())
            print(f"cores busy during {name} at {r['in_flight']} in flight: {usage}")
    print(f"results: {cfg.output}")


if __name__ == "__main__":
    main()
