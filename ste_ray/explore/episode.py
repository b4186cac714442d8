"""One exploration episode: one API, one conversation with the explorer model.

  for each of ``num_stm_slots`` trials (short-term memory: all in the same conversation)
    imagination  the explorer writes a user request the API could serve (temperature 1.0); the
                 first prompt lists the requests already explored for this API (long-term memory).
                 Grounded (``--explore.imagination grounded``): the explorer first writes one valid
                 call (constrained), the call is executed, and from the call and its result it
                 writes the request they answer, outside the conversation: the trial does not see
                 the call, and a trial whose call matches it carries a verified label
    trial        the explorer answers in the ReAct format; each Action is really executed through
                 the tool-call actors and its result comes back as the Observation; a turn that does
                 not parse gets a corrective Observation instead; up to ``max_turn`` calls (constrained,
                 the turn after the last call can only be the final answer)
    reflection   the explorer says whether it fulfilled the request (Yes/No)

With an ``imaginer`` (iterated STE: a fine-tuned student makes the trials), another model writes the
requests, each in a request of its own, and the explorer's conversation starts at the trial; the
imaginer also writes the trial's final answer from the calls' results, since a student fine-tuned
on calls alone answers with an API's name. Exploitation checks that answer as it checks any.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from typing import Any

from ste_ray.client import ChatResult, LLMClient, LLMRequestError
from ste_ray.constrained import REFLECTION_REGEX, grammar_request, regex_request, turn_grammar
from ste_ray.explore.settings import ExploreSettings
from ste_ray.queries import call_values, missing_value, query_problem
from ste_ray.react import STOP, format_call, parse_reflection, parse_turn, reflection_prompt, trial_prompt
from ste_ray.schema import Episode, Step, Trial
from ste_ray.tools.calls import ToolBox
from ste_ray.tools.spec import ToolSpec

# A long-term memory entry: a query explored for the API, and whether the explorer fulfilled it.
MemoryEntry = tuple[str, bool | None]

# ---------------------------------------------------------------------------------------------
# Prompts (the method's steps, in our own words; the trial's format is ste_ray.react's)


def api_introduction(spec: ToolSpec) -> str:
    return f"You are learning to use an API by trying it out. This is its documentation:\n\n{spec.ste_block()}\n\n"


def memory_lines(memory: list[MemoryEntry], settings: ExploreSettings) -> str:
    shown = memory[-settings.memory_entries:] if settings.memory_entries and not settings.no_ltm else []
    if not shown:
        return ""
    lines = "\n".join(f"- {q} (fulfilled: {'yes' if ok else 'no' if ok is False else 'unknown'})" for q, ok in shown)
    return ("Requests already explored for this API:\n" + lines +
            "\nDo not repeat them: cover uses of the API that they have not covered yet.\n\n")


def imagination_prompt(spec: ToolSpec, memory: list[MemoryEntry], settings: ExploreSettings) -> str:
    return (api_introduction(spec) + memory_lines(memory, settings) +
            "Write one realistic, specific request that a user could make and that this API would help with, as "
            "a person would write it in plain words (not code, not an HTTP request, not JSON). Do not name the "
            "API. Write only the request, on one line.")


def grounding_call_prompt(spec: ToolSpec, memory: list[MemoryEntry], settings: ExploreSettings) -> str:
    return (api_introduction(spec) + memory_lines(memory, settings) +
            "Write one call of this API with realistic, specific argument values that a user could need.")


def request_prompt(spec: ToolSpec, arguments: dict[str, Any], observation: str, values: list[str]) -> str:
    """Asks for the request a call and its result answer. (With worked examples in the prompt, the
    1.5B teacher copied the examples' requests instead of writing this call's.)"""
    stated = f" that states {', '.join(repr(v) for v in values)}" if values else ""
    return (f"A user asked for something, and this API call answered it.\n\n{spec.ste_block()}\n\n"
            f"Call: {spec.name} with {json.dumps(arguments, ensure_ascii=False)}\nResult: {observation[:600]}\n\n"
            f"Write the user's request: one sentence in plain words, as a person would ask it{stated}. Not code, "
            "not JSON, and not the API's name.")


def answer_prompt(query: str, steps: list[Step]) -> str:
    calls = "\n".join(f"{format_call(s.action, s.action_input or '')}\nObservation: {s.observation[:600]}"
                      for s in steps if s.action and not s.parse_error)
    return (f'A user asked: "{query}"\nThese API calls were made for the request, with their results:\n\n{calls}\n\n'
            "Write the final answer to the user: one sentence that uses the results.")


def values_to_state(arguments: dict[str, Any]) -> list[str]:
    """The call values a request written from it must state: numbers, and strings of 3 characters or
    more (codes such as a language's "fr" are implied by the words, not written)."""
    return [v for v in call_values(arguments) if v.replace(".", "").lstrip("-").isdigit() or len(v) >= 3]


# A small explorer's sample now and then holds no words at all (an empty line, a code fence): it is
# asked again rather than tried as an empty request.
IMAGINATION_RETRIES = 2
EMPTY_QUERY_PROMPT = "That was empty. Write the user request itself, on one line."
NEXT_QUERY_PROMPT = ("Building on what you learned in the attempts above, write another realistic user request "
                     "that needs this API in a different way (other arguments or another need). Do not name "
                     "the API. Write only the request, on one line.")

NO_EXEC_OBSERVATION = ("(Execution is disabled in this run: the API was not called and no result is available. "
                       "Continue without it.)")


def clean_query(text: str) -> str:
    # The first line that holds words (small models open with code fences or bullets).
    line = next((ln for ln in text.strip().splitlines() if re.search(r"\w", ln)), "")
    line = re.sub(r"^\s*(\*\*)?(query|request|user request|user)(\*\*)?\s*:\s*", "", line, flags=re.I)
    return line.strip().strip('"').strip()


# ---------------------------------------------------------------------------------------------
# The episode


def episode_id(api: str, index: int) -> str:
    return f"{hashlib.sha1(api.encode()).hexdigest()[:10]}-{index:04d}"


@dataclasses.dataclass
class EpisodeTask:
    run_id: str
    api: str
    episode_index: int
    memory: list[MemoryEntry]  # the API's long-term memory when the episode starts

    @property
    def episode_id(self) -> str:
        return episode_id(self.api, self.episode_index)


@dataclasses.dataclass
class EpisodeResult:
    episode: Episode
    trials: list[Trial]


class ContextFull(Exception):
    """The conversation no longer fits the model's context."""


class Conversation:
    """The episode's messages, and what its model requests cost."""

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
        self.count(result)
        self.add("assistant", result.text)
        return result.text

    def count(self, result: ChatResult) -> None:
        """Add a request's cost to the episode's (the conversation's own, and grounding's requests)."""
        self.prompt_tokens += result.usage.get("prompt_tokens", 0)
        self.completion_tokens += result.usage.get("completion_tokens", 0)
        self.model_latency_s += result.latency_s
        self.completion_tokens_per_request.append(result.usage.get("completion_tokens", 0))


async def run_episode(llm: LLMClient, tools: ToolBox, spec: ToolSpec, task: EpisodeTask,
                      settings: ExploreSettings, imaginer: LLMClient | None = None) -> EpisodeResult:
    started = time.perf_counter()
    chat = Conversation(task.episode_id, settings.visualize)
    seed = None
    if settings.seed is not None:
        seed = int(hashlib.sha1(f"{settings.seed}:{task.episode_id}".encode()).hexdigest()[:8], 16)
    trials: list[Trial] = []
    stop_reason = "completed"
    try:
        for slot in range(settings.trials_per_episode):
            # Requests imagined outside the conversation know its earlier requests only from memory.
            memory = task.memory + [(t.query, t.success) for t in trials]
            trials.append(await run_trial(llm, tools, spec, task, memory, settings, chat, slot,
                                          None if seed is None else seed + 1000 * slot, imaginer))
    except ContextFull:
        stop_reason = "context_full"
    episode = Episode(
        run_id=task.run_id, api=task.api, episode_id=task.episode_id, episode_index=task.episode_index,
        conversation=json.dumps(chat.messages, ensure_ascii=False), num_trials=len(trials), stop_reason=stop_reason,
        memory_size=len(task.memory), prompt_tokens=chat.prompt_tokens, completion_tokens=chat.completion_tokens,
        latency_s=time.perf_counter() - started, model_latency_s=chat.model_latency_s,
        completion_tokens_per_request=chat.completion_tokens_per_request)
    return EpisodeResult(episode, trials)


@dataclasses.dataclass
class Grounding:
    """A grounded request's origin: the call it was written from and that call's result."""

    arguments: dict[str, Any]
    observation: str


def by_novelty(calls: list[dict[str, Any]], memory: list[MemoryEntry]) -> list[dict[str, Any]]:
    """Distinct calls, the most novel first: the most values that no request in ``memory`` states
    (grounded requests state their call's values), then the fewest that one does; ties keep their
    order. (Sampled one at a time, the 1.5B teacher wrote the same call again and again: 6 of 16
    Places calls were Edinburgh, 5 of 16 Numbers Translator calls its documentation's example.)"""
    explored = [query.lower() for query, _ in memory]
    distinct = list({json.dumps(c, sort_keys=True): c for c in calls}.values())

    def novelty(call: dict[str, Any]) -> tuple[int, int]:
        values = [v.lower() for v in values_to_state(call)]
        seen = sum(any(v in query for query in explored) for v in values)
        return len(values) - seen, -seen

    return sorted(distinct, key=novelty, reverse=True)


async def grounded_request(llm: LLMClient, tools: ToolBox, spec: ToolSpec, memory: list[MemoryEntry],
                           settings: ExploreSettings, chat: Conversation) -> tuple[str, Grounding] | None:
    """A user request written from a valid call and its real result (see the module docstring), in
    requests of their own: ``grounding_candidates`` calls are sampled and tried most novel first
    (``by_novelty``); for the first that executes cleanly, the first of three candidate requests that
    is a request and states the call's values. None when no call passed, in two tries."""
    grammar = grammar_request(turn_grammar([(spec.name, spec.parameters)], thought=False, allow_final=False))
    for _ in range(2):
        result = await llm.chat([{"role": "user", "content": grounding_call_prompt(spec, memory, settings)}],
                                temperature=settings.imagination_temperature, max_tokens=settings.turn_max_tokens,
                                n=settings.grounding_candidates, extra_body=grammar)
        chat.count(result)
        calls = [turn.arguments for turn in (parse_turn(text, [spec.name]) for text in result.texts)
                 if turn.arguments is not None]
        for arguments in by_novelty(calls, memory):
            observation = await tools.call(spec.name, arguments)
            if not observation.ok:
                continue
            values = values_to_state(arguments)
            result = await llm.chat([{"role": "user", "content": request_prompt(spec, arguments, observation.text,
                                                                                values)}],
                                    temperature=0.8, max_tokens=settings.query_max_tokens, n=3, stop=["\n"])
            chat.count(result)
            for text in result.texts:
                query = clean_query(text)
                if query and not query_problem(query, spec.ste_description()) and missing_value(query, values) is None:
                    return query, Grounding(arguments, observation.text)
    return None


def matches(steps: list[Step], grounding: Grounding) -> bool:
    """Whether the trial's last clean call is the grounding call: the same arguments, or the same result."""
    clean = [s for s in steps if s.action and not s.parse_error and not s.tool_error_kind]
    if not clean:
        return False
    try:
        same_arguments = json.loads(clean[-1].action_input) == grounding.arguments
    except json.JSONDecodeError:
        same_arguments = False
    return same_arguments or clean[-1].observation == grounding.observation


async def run_trial(llm: LLMClient, tools: ToolBox, spec: ToolSpec, task: EpisodeTask, memory: list[MemoryEntry],
                    settings: ExploreSettings, chat: Conversation, slot: int, seed: int | None,
                    imaginer: LLMClient | None = None) -> Trial:
    """Imagination, trial and reflection for the ``slot``-th request of the conversation; ``memory``:
    the API's long-term memory and the requests of the conversation's earlier trials."""
    started = time.perf_counter()
    tokens_before = (chat.prompt_tokens, chat.completion_tokens)
    grounded, grounding = None, None
    if settings.imagination == "grounded" and not settings.no_exec:
        grounded = await grounded_request(imaginer or llm, tools, spec, memory, settings, chat)
    if grounded:
        query, grounding = grounded
    elif imaginer:
        for attempt in range(1 + IMAGINATION_RETRIES):
            result = await imaginer.chat([{"role": "user", "content": imagination_prompt(spec, memory, settings)}],
                                         temperature=settings.imagination_temperature,
                                         max_tokens=settings.query_max_tokens,
                                         seed=None if seed is None else seed + attempt)
            chat.count(result)
            query = clean_query(result.text)
            if query:
                break
    else:
        chat.add("user", imagination_prompt(spec, task.memory, settings) if slot == 0 else NEXT_QUERY_PROMPT)
        query = clean_query(await chat.ask(llm, temperature=settings.imagination_temperature,
                                           max_tokens=settings.query_max_tokens, seed=seed))
        for _ in range(IMAGINATION_RETRIES):
            if query:
                break
            chat.add("user", EMPTY_QUERY_PROMPT)
            query = clean_query(await chat.ask(llm, temperature=settings.imagination_temperature,
                                               max_tokens=settings.query_max_tokens, seed=seed))
    # A request imagined outside the conversation finds the API not introduced yet on the first slot.
    introduce = slot == 0 and bool(grounded or imaginer)
    chat.add("user", (api_introduction(spec) if introduce else "") + trial_prompt(spec.name, query))
    tools_of_turn = [(spec.name, spec.parameters)]
    steps: list[Step] = []
    final_answer = None
    calls = 0
    for turn_index in range(settings.max_turn + 1):
        turn_started = time.perf_counter()
        constraint = None
        if settings.constrained:  # with call_first, no final answer before a call; out of calls, only an answer
            callable_tools = tools_of_turn if calls < settings.max_turn else []
            constraint = grammar_request(turn_grammar(callable_tools, allow_final=calls > 0 or not settings.call_first))
        text = await chat.ask(llm, temperature=settings.trial_temperature, max_tokens=settings.turn_max_tokens,
                              stop=STOP, seed=None if seed is None else seed + 1 + turn_index, extra_body=constraint)
        turn = parse_turn(text, [spec.name])
        if turn.final_answer is not None:
            final_answer = turn.final_answer
            break
        if calls == settings.max_turn:
            break  # out of calls: the trial ends without a final answer
        tool_error_kind = None
        if turn.error:
            observation = turn.error
        elif settings.no_exec:
            observation = NO_EXEC_OBSERVATION
            calls += 1
        else:
            result = await tools.call(spec.name, turn.arguments)
            observation, tool_error_kind = result.text, result.error_kind
            calls += 1
        steps.append(Step(thought=turn.thought, action=turn.action, action_input=turn.action_input,
                          observation=observation, parse_error=turn.error, tool_error_kind=tool_error_kind,
                          latency_s=time.perf_counter() - turn_started))
        chat.add("user", f"Observation: {observation}")
    if imaginer and calls:
        result = await imaginer.chat([{"role": "user", "content": answer_prompt(query, steps)}], temperature=0.0,
                                     max_tokens=settings.query_max_tokens)
        chat.count(result)
        line = next((ln for ln in result.text.splitlines() if ln.strip()), "")
        final_answer = re.sub(r"^\s*(Final Answer|Answer)\s*:\s*", "", line, flags=re.I).strip()
    reflection, success = None, None
    if not settings.no_reflection:
        chat.add("user", reflection_prompt(query))
        reflection = await chat.ask(llm, temperature=0.0, max_tokens=8,
                                    extra_body=regex_request(REFLECTION_REGEX) if settings.constrained else None)
        success = parse_reflection(reflection)
    return Trial(
        run_id=task.run_id, api=task.api, episode_id=task.episode_id, episode_index=task.episode_index, slot=slot,
        query=query, steps=steps, final_answer=final_answer, reflection=reflection, success=success, num_calls=calls,
        num_parse_errors=sum(1 for s in steps if s.parse_error), num_tool_errors=sum(1 for s in steps if s.tool_error_kind),
        executed=not settings.no_exec, constrained=settings.constrained,
        grounding_call=json.dumps(grounding.arguments, ensure_ascii=False) if grounding else None,
        grounding_observation=grounding.observation if grounding else None,
        matches_grounding=matches(steps, grounding) if grounding else None,
        prompt_tokens=chat.prompt_tokens - tokens_before[0], completion_tokens=chat.completion_tokens - tokens_before[1],
        latency_s=time.perf_counter() - started)
