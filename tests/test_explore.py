"""Exploration end to end: the real embedded engine, real tools through the tool-call actors, real
Parquet. Tiny sizes (one trial per episode, short outputs) keep it to a few minutes on 2 cores."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid

import pyarrow.parquet as pq
import pytest
from aiohttp import web

from ste_ray.explore import ExploreSettings, run_exploration
from ste_ray.explore.episode import NO_EXEC_OBSERVATION, episode_id
from ste_ray.schema import Episode, Trial, read_dir, read_records
from ste_ray.tools.builtin import ste_offline_apis
from ste_ray.tools.sources import ste_api_descriptions_path
from ste_ray.tools.calls import ToolCallConfig, ToolLimits
from ste_ray.tools.spec import Executor, ToolSpec

pytestmark = pytest.mark.engine

# One episode per shard: the tests below watch episodes arrive one by one.
TINY = dict(num_stm_slots=1, max_turn=2, query_max_tokens=32, turn_max_tokens=160, num_actors=2, shard_episodes=1)


def add_date():
    return ste_offline_apis(ste_api_descriptions_path(), ["add_date"])[0]


class FailingEvery3rd:
    """An HTTP tool whose service answers 500 to every third request (fault injection, ~33%)."""

    def __init__(self):
        self.requests = 0

    async def handle(self, request):
        self.requests += 1
        body = await request.json()
        if self.requests % 3 == 0:
            return web.json_response({"error": "injected fault"}, status=500)
        return web.json_response({"city": body.get("city"), "temperature_c": 21})


@pytest.fixture
async def flaky_weather(serve_app):
    service = FailingEvery3rd()
    app = web.Application()
    app.router.add_post("/weather", service.handle)
    url = await serve_app(app)
    spec = ToolSpec(
        name="get_weather", description="Current temperature in a city.",
        parameters={"type": "object", "properties": {"city": {"type": "string", "description": "city name"}},
                    "required": ["city"]},
        executor=Executor(kind="http", base_url=url, path="/weather", body_params=("city",)),
    )
    return spec, service


def tool_cfg(**limits):
    # No retries: each injected fault must reach the explorer as an observation.
    return ToolCallConfig(scope=f"x{uuid.uuid4().hex[:8]}", limits=ToolLimits(max_retries=0, **limits))


async def test_run_writes_parquet_and_survives_a_failing_tool(ray_session, engine, flaky_weather, tmp_path):
    weather, service = flaky_weather
    settings = ExploreSettings(num_episodes=4, episodes_in_flight=2, **TINY)
    result = await run_exploration(engine, [add_date(), weather], settings, tool_cfg(), tmp_path, "r1", progress=False)
    assert result.failures == [] and result.episodes_done == 8

    episodes = pq.read_table(tmp_path / "episodes").to_pylist()
    trials = pq.read_table(tmp_path / "trials").to_pylist()
    assert sorted(e["episode_id"] for e in episodes) == sorted(
        episode_id(api, i) for api in ("add_date", "get_weather") for i in range(4))
    assert len(trials) == 8 and {t["slot"] for t in trials} == {0}
    for e in episodes:
        conversation = json.loads(e["conversation"])
        assert conversation[0]["role"] == "user" and "API_name: " + e["api"] in conversation[0]["content"]
        assert e["completion_tokens"] > 0
        assert 0 < e["model_latency_s"] < e["latency_s"]  # the rest: tool calls, parsing, scheduling
        replies = e["completion_tokens_per_request"]  # one per assistant message: a replayable record
        assert len(replies) == sum(m["role"] == "assistant" for m in conversation)
        assert sum(replies) == e["completion_tokens"]
    for t in trials:
        assert t["query"] and t["constrained"] and t["executed"]
        assert t["success"] in (True, False)  # constrained reflection always gives Yes or No
        for step in t["steps"]:
            assert step["parse_error"] is None  # constrained turns always parse
            assert step["action"] == t["api"] and step["observation"]
    steps = [s for t in trials if t["api"] == "get_weather" for s in t["steps"]]
    assert len(steps) == service.requests >= 3  # every call really reached the service
    injected = [s for s in steps if s["tool_error_kind"] == "http_5xx"]
    assert len(injected) == service.requests // 3
    assert all("HTTP 500" in s["observation"] for s in injected)
    executed = [s for t in trials if t["api"] == "add_date" for s in t["steps"] if s["tool_error_kind"] is None]
    assert all(s["observation"].startswith('{"date": ') for s in executed)


async def test_killed_run_resumes_without_loss_or_repeats(ray_session, engine, tmp_path):
    settings = ExploreSettings(num_episodes=4, episodes_in_flight=1, **TINY)
    cfg = tool_cfg()
    run = asyncio.ensure_future(run_exploration(engine, [add_date()], settings, cfg, tmp_path, "r2", progress=False))
    while len(list((tmp_path / "episodes").glob("*.parquet"))) < 2:
        await asyncio.sleep(0.5)
    run.cancel()  # the driver dies mid-run: the episode in flight is lost
    with pytest.raises(asyncio.CancelledError):
        await run
    # The episode in flight was cancelled with the run, not left to fail once its actor was killed
    # (asyncio would log that unretrieved error from the garbage collector, at any later moment).
    assert [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "Scheduler._run_on"] == []
    finished_before = {e["episode_id"] for e in read_dir(tmp_path / "episodes", Episode).to_pylist()}
    assert 2 <= len(finished_before) < 4

    result = await run_exploration(engine, [add_date()], settings, cfg, tmp_path, "r3", progress=False)
    assert result.episodes_before == len(finished_before) and result.episodes_done == 4 - len(finished_before)
    episodes = read_dir(tmp_path / "episodes", Episode).to_pylist()
    ids = [e["episode_id"] for e in episodes]
    assert sorted(ids) == sorted(episode_id("add_date", i) for i in range(4))  # all, none twice
    trials = read_dir(tmp_path / "trials", Trial).to_pylist()
    assert sorted(t["episode_id"] for t in trials) == sorted(ids)
    # Long-term memory was rebuilt from what the first run wrote.
    resumed = [e for e in episodes if e["episode_id"] not in finished_before]
    assert min(e["memory_size"] for e in resumed) >= len(finished_before)
    assert {e["run_id"] for e in episodes} == {"r2", "r3"}


async def test_killed_actor_is_replaced(ray_session, engine, tmp_path):
    import ray

    settings = ExploreSettings(num_episodes=6, episodes_in_flight=3, **{**TINY, "num_actors": 1})
    run = asyncio.ensure_future(run_exploration(engine, [add_date()], settings, tool_cfg(), tmp_path, "r4", progress=False))
    actor = None
    while actor is None:
        try:
            actor = ray.get_actor("ste-explorer:r4:0", namespace="ste-ray")
        except ValueError:
            await asyncio.sleep(0.2)
    while not list((tmp_path / "episodes").glob("*.parquet")):
        await asyncio.sleep(0.2)
    ray.kill(actor, no_restart=False)  # dies with episodes in flight
    result = await run
    assert result.failures == [] and result.episodes_done == 6
    assert len(read_dir(tmp_path / "episodes", Episode)) == 6
    assert ray._private.state.actors(actor._actor_id.hex())["NumRestarts"] >= 1  # it was restarted, and finished


async def test_ablations_change_what_the_explorer_sees(ray_session, engine, tmp_path):
    settings = ExploreSettings(num_episodes=2, episodes_in_flight=1, no_exec=True, no_ltm=True, no_reflection=True,
                               no_stm=True, **{**TINY, "num_stm_slots": 3})
    cfg = tool_cfg()
    result = await run_exploration(engine, [add_date()], settings, cfg, tmp_path, "r5", progress=False)
    assert result.failures == []
    trials = read_dir(tmp_path / "trials", Trial).to_pylist()
    assert len(trials) == 2  # no STM: one trial per episode although num_stm_slots is 3
    for t in trials:
        assert t["executed"] is False and t["reflection"] is None and t["success"] is None
        assert all(s["observation"] == NO_EXEC_OBSERVATION for s in t["steps"] if not s["parse_error"])
    for e in read_dir(tmp_path / "episodes", Episode).to_pylist():
        conversation = json.loads(e["conversation"])
        assert "already explored" not in conversation[0]["content"]  # no LTM, even for the second episode
        assert not any("Did you fulfill" in m["content"] for m in conversation)


def unit_length(unit: str) -> dict:
    return {"unit": unit, "meters": {"km": 1000, "mi": 1609.344}[unit]}


def length_of_unit():
    """A tool every schema-valid call of which executes, and whose values (two letters) a request
    need not state: whether grounding finds a call does not depend on the tiny model's luck."""
    return ToolSpec(name="unit_length", description="The length of one distance unit in meters.",
                    parameters={"type": "object", "properties": {"unit": {"type": "string", "enum": ["km", "mi"]}},
                                "required": ["unit"]},
                    executor=Executor(kind="python", function=unit_length))


async def test_grounded_imagination_writes_the_request_from_an_executed_call(ray_session, engine, tmp_path):
    # Two grounding calls sampled at once: the engine constrains every choice of one request.
    settings = ExploreSettings(num_episodes=2, episodes_in_flight=2, imagination="grounded", grounding_candidates=2,
                               **{**TINY, "query_max_tokens": 48})
    spec = length_of_unit()
    result = await run_exploration(engine, [spec], settings, tool_cfg(), tmp_path, "r6", progress=False)
    assert result.failures == []
    trials = read_records(tmp_path / "trials", Trial)
    grounded = [t for t in trials if t.grounding_call is not None]
    assert grounded  # three candidate requests a try, two tries a trial: any sentence of 3 words will do
    for t in grounded:
        arguments = json.loads(t.grounding_call)
        assert spec.argument_error(arguments) is None  # schema-valid, and it really ran:
        assert json.loads(t.grounding_observation) == unit_length(**arguments)
        assert isinstance(t.matches_grounding, bool) and t.query
        first_call = next((s for s in t.steps if s.action), None)
        assert first_call is not None  # call_first: the trial called before it could answer
    for e in read_records(tmp_path / "episodes", Episode):  # the grounding requests are not in the conversation
        assert "A user asked for something" not in e.conversation and "Write one call of this API" not in e.conversation


async def test_a_later_round_has_another_model_write_the_requests_and_remembers_the_earlier_round(
        ray_session, engine, tmp_path):
    """Iterated STE's exploration: the imaginer writes each request and the final answer in requests of
    its own, so the explorer's conversation starts at the trial and holds no such answer; the long-term
    memory starts with the earlier round's requests."""
    settings = ExploreSettings(num_episodes=1, **TINY)
    spec = add_date()
    await run_exploration(engine, [spec], settings, tool_cfg(), tmp_path / "round_1", "r7", progress=False)
    result = await run_exploration(engine, [spec], settings, tool_cfg(), tmp_path / "round_2", "r8", progress=False,
                                   imaginer=engine, earlier_rounds=[tmp_path / "round_1"])
    assert result.failures == []
    (episode,) = read_records(tmp_path / "round_2" / "episodes", Episode)
    assert episode.memory_size == len(read_records(tmp_path / "round_1" / "trials", Trial)) == 1
    (trial,) = read_records(tmp_path / "round_2" / "trials", Trial)
    first, reply = json.loads(episode.conversation)[:2]
    assert f'handle this request: "{trial.query}"' in first["content"] and "Write one realistic" not in first["content"]
    assert reply["role"] == "assistant"  # the explorer's first words are its trial's first turn
    assert trial.num_calls >= 1 and trial.final_answer  # call_first: a call was made, so the imaginer answered
    assert f"Final Answer: {trial.final_answer}" not in episode.conversation


def test_shards_count_a_trial_only_with_its_runs_episode_row(tmp_path):
    """A run killed between a shard's trials and its episode rows leaves trial rows behind; the run
    that resumes writes the episode again: its trials count once, the orphans never."""
    from ste_ray.explore.episode import EpisodeResult
    from ste_ray.explore.run import ShardWriter, load_progress, summarize
    from ste_ray.schema import finished_trials, write_records
    from tests.exploration_data import trial

    def result(index: int, run_id: str) -> EpisodeResult:
        t = dataclasses.replace(trial("add_date", index, f"query {index} of {run_id}", [], "x"), run_id=run_id)
        episode = Episode(run_id=run_id, api="add_date", episode_id=t.episode_id, episode_index=index, conversation="[]",
                          num_trials=1, stop_reason="completed", memory_size=0, prompt_tokens=0, completion_tokens=0,
                          latency_s=0.0, model_latency_s=0.0, completion_tokens_per_request=[])
        return EpisodeResult(episode, [t])

    killed = ShardWriter(tmp_path, "run1", max_episodes=2, max_wait_s=3600)
    killed.add(result(0, "run1"))
    killed.add(result(1, "run1"))  # a whole shard
    orphan = result(2, "run1")
    write_records(tmp_path / "trials" / "run1-00001.parquet", orphan.trials, Trial)  # killed before its episode row
    finished, memory = load_progress(tmp_path)
    assert finished == {episode_id("add_date", 0), episode_id("add_date", 1)}
    assert [q for q, _ in memory["add_date"]] == ["query 0 of run1", "query 1 of run1"]
    resumed = ShardWriter(tmp_path, "run2", max_episodes=64, max_wait_s=3600)
    resumed.add(result(2, "run2"))
    resumed.flush()
    trials = finished_trials(tmp_path).to_pylist()
    assert sorted(t["query"] for t in trials) == ["query 0 of run1", "query 1 of run1", "query 2 of run2"]
    assert summarize(tmp_path)["add_date"] == {"episodes": 3, "trials": 3, "calls": 0, "tool_errors": 0,
                                               "parse_errors": 0, "last_call_ran": 0, "grounded_answer": 0,
                                               "verified": 0, "claimed": 3, "claimed_not_verified": 3}


def test_the_closing_table_counts_what_was_verified_beside_what_was_claimed(tmp_path):
    """Three trials the explorer called successes: one whose call ran and whose answer repeats the
    result (verified), one whose every call failed, one whose answer invents its result. Only the
    first is verified; the other two are counted as claimed, not verified, and with most calls
    failed the run ends with a line that says so and what to do."""
    from ste_ray.explore.run import failing_calls_warning, summarize, summary_rows
    from ste_ray.schema import Step
    from tests.exploration_data import trial, write_exploration

    def call(observation: str, error: str | None = None) -> Step:
        return Step(thought="t", action="add_date", action_input='{"date": "2023-05-01", "days": 30}',
                    observation=observation, parse_error=None, tool_error_kind=error, latency_s=0.0)

    trials = [trial("add_date", 0, "What is 30 days after 2023-05-01?", [call('{"date": "2023-05-31"}')],
                    "It is 2023-05-31."),
              trial("add_date", 1, "What is 30 days after 2023-05-01?",
                    [call("Error: bad date", "tool_error"), call("Error: bad date", "tool_error")], "It is 2023-06-01."),
              trial("add_date", 2, "What is 30 days after 2023-05-01?",
                    [call("Error: bad date", "tool_error"), call('{"date": "2023-05-31"}')], "It is a Friday.")]
    write_exploration(tmp_path, trials, [])
    summary = summarize(tmp_path)
    assert summary["add_date"] == {"episodes": 3, "trials": 3, "calls": 5, "tool_errors": 3, "parse_errors": 0,
                                   "last_call_ran": 2, "grounded_answer": 1, "verified": 1, "claimed": 3,
                                   "claimed_not_verified": 2}
    assert summary["total"] == summary["add_date"]
    assert summary_rows(summary)[0] == ["add_date", 3, 3, 5, 3, 0, "2/3", "1/3", "1/3", "3/3", 2]
    warning = failing_calls_warning(summary, "embedded")
    assert warning.startswith("warning: 3 of 5 calls ended in a tool error; 1 of 3 trials verified.")
    assert "--engine.model teacher" in warning
    assert "--engine.model" in failing_calls_warning(summary, "/models/other")
    assert failing_calls_warning({"total": {**summary["total"], "tool_errors": 2}}, "embedded") is None


class LosingActor:
    """Stands in for an exploration actor (control flow only): the first call of each listed episode
    fails as a call to an actor whose node died does; every other call returns a marker."""

    def __init__(self, lose: set[str], error: BaseException):
        self.lose, self.error, self.calls = set(lose), error, []
        self.run = self  # actor.run.remote(task)

    def remote(self, task):
        self.calls.append(task.episode_id)

        async def result():
            if task.episode_id in self.lose:
                self.lose.discard(task.episode_id)
                raise self.error
            return task.episode_id
        return result()


async def test_an_episode_whose_actor_was_lost_runs_again_and_other_failures_are_reported(monkeypatch):
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    from ste_ray.explore import scheduler as scheduler_module
    from ste_ray.explore.scheduler import Scheduler

    monkeypatch.setattr(scheduler_module, "RERUN_BACKOFF_S", (0.01, 0.02))
    settings = ExploreSettings(num_episodes=3, episodes_in_flight=2, max_in_flight=4)
    lost = episode_id("a", 1)
    actor = LosingActor({lost}, ActorDiedError())
    scheduler = Scheduler([actor], "r", {"a": [0, 1, 2]}, {}, settings)
    finished = [f async for f in scheduler.run()]
    assert sorted(f.result for f in finished) == sorted(episode_id("a", i) for i in range(3))  # none lost, none twice
    assert actor.calls.count(lost) == 2 and scheduler.reruns == {lost: 1}

    class Broken(LosingActor):  # its node never comes back: reported once the rerun window is over
        def remote(self, task):
            self.lose.add(task.episode_id)
            return super().remote(task)

    monkeypatch.setattr(scheduler_module, "RERUN_WITHIN_S", 0.2)
    always = Broken(set(), ActorUnavailableError("temporarily unavailable", b"0" * 16))
    finished = [f async for f in Scheduler([always], "r", {"a": [0]}, {}, settings).run()]
    assert len(finished) == 1 and isinstance(finished[0].error, ActorUnavailableError)
    assert always.calls.count(episode_id("a", 0)) >= 5  # tried again and again, with backoff, for 0.2 s

    other = LosingActor({episode_id("a", 0)}, ValueError("bad tool spec"))  # not a lost actor: reported at once
    finished = [f async for f in Scheduler([other], "r", {"a": [0]}, {}, settings).run()]
    assert isinstance(finished[0].error, ValueError) and other.calls == [episode_id("a", 0)]


def test_grounding_tries_the_most_novel_call_first():
    """Calls already stated by an explored request rank last, a call no request states ranks first,
    the same call sampled twice is tried once, and calls without values keep their order."""
    from ste_ray.explore.episode import by_novelty

    memory = [("Where is Edinburgh?", True), ("Coordinates of London in English, please.", None)]
    calls = [{"name": "Edinburgh", "lang": "en"}, {"name": "Tokyo", "lang": "ja"}, {"name": "London", "lang": "fr"},
             {"name": "Tokyo", "lang": "ja"}]
    assert by_novelty(calls, memory) == [{"name": "Tokyo", "lang": "ja"}, {"name": "Edinburgh", "lang": "en"},
                                         {"name": "London", "lang": "fr"}]
    assert by_novelty([{}, {"a": True}], memory) == [{}, {"a": True}]


async def test_grounding_samples_several_calls_and_remembers_the_episodes_earlier_requests():
    """Control flow with a scripted model (the real engine's grounded run is the test above): the
    grounding asks for ``grounding_candidates`` calls in one request and tries them most novel first,
    skipping one whose execution fails; the second trial's grounding knows the first trial's request,
    so it does not ground on the same city again."""
    from ste_ray.client import ChatResult
    from ste_ray.explore.episode import EpisodeTask, run_episode
    from ste_ray.tools.calls import Observation

    spec = ToolSpec(name="weather", description="Current temperature in a city.",
                    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
    cities = ["Tokyo", "Edinburgh", "Atlantis", "Lima"]
    call_prompts: list[tuple[str, int]] = []

    class Scripted:
        async def chat(self, messages, n=None, **sampling):
            prompt = messages[-1]["content"]
            if "Write one call of this API" in prompt:
                call_prompts.append((prompt, n))
                texts = [f'Action: weather\nAction Input: {{"city": "{c}"}}' for c in cities]
            elif "A user asked for something" in prompt:
                city = json.loads(prompt.split("Call: weather with ")[1].split("\n")[0])["city"]
                texts = [f"How warm is it in {city} now?"] * n
            elif prompt.startswith("Did you fulfill"):
                texts = ["Yes"]
            elif prompt.startswith("Observation"):
                texts = ["Final Answer: 21 degrees."]
            else:
                texts = ['Action: weather\nAction Input: {"city": "Lima"}']
            return ChatResult(texts, [None] * len(texts), {}, 0.0)

    class Tools:
        async def call(self, name, arguments):
            if arguments["city"] == "Atlantis":
                return Observation(name, False, "Error: no such city", "invalid_arguments")
            return Observation(name, True, json.dumps({"city": arguments["city"], "temperature_c": 21}))

    settings = ExploreSettings(num_stm_slots=2, max_turn=1, imagination="grounded", grounding_candidates=4,
                               constrained=False)
    task = EpisodeTask("r", spec.name, 0, [("Is it raining in Tokyo?", True)])
    first, second = (await run_episode(Scripted(), Tools(), spec, task, settings)).trials
    assert [json.loads(t.grounding_call)["city"] for t in (first, second)] == ["Edinburgh", "Lima"]
    assert first.query == "How warm is it in Edinburgh now?" and second.matches_grounding
    assert [n for _, n in call_prompts] == [4, 4]
    assert first.query not in call_prompts[0][0] and first.query in call_prompts[1][0]


async def test_an_imagined_request_without_words_is_asked_again():
    """Control flow with a scripted model: a sample of the small explorer that holds no words (seen
    once in a suite run on the real engine: a trial with an empty request) is asked for again in the
    conversation, and the trial runs on the request that follows; each reply stays one request."""
    from ste_ray.client import ChatResult
    from ste_ray.explore.episode import EMPTY_QUERY_PROMPT, EpisodeTask, run_episode
    from ste_ray.tools.calls import Observation

    spec = ToolSpec(name="weather", description="Current temperature in a city.",
                    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
    imagined = iter(["```", "How warm is it in Lima now?"])

    class Scripted:
        async def chat(self, messages, n=None, **sampling):
            prompt = messages[-1]["content"]
            if "Write only the request" in prompt or prompt == EMPTY_QUERY_PROMPT:
                text = next(imagined)
            elif prompt.startswith("Did you fulfill"):
                text = "Yes"
            elif prompt.startswith("Observation"):
                text = "Final Answer: 21 degrees."
            else:
                text = 'Action: weather\nAction Input: {"city": "Lima"}'
            return ChatResult([text], [None], {"completion_tokens": 1}, 0.0)

    class Tools:
        async def call(self, name, arguments):
            return Observation(name, True, json.dumps({"city": arguments["city"], "temperature_c": 21}))

    settings = ExploreSettings(num_stm_slots=1, max_turn=1, imagination="free", constrained=False)
    result = await run_episode(Scripted(), Tools(), spec, EpisodeTask("r", spec.name, 0, []), settings)
    (trial,) = result.trials
    assert trial.query == "How warm is it in Lima now?" and trial.steps[0].action_input == '{"city": "Lima"}'
    conversation = json.loads(result.episode.conversation)
    assert [m["content"] for m in conversation[1:3]] == ["```", EMPTY_QUERY_PROMPT]
    assert len(result.episode.completion_tokens_per_request) == sum(m["role"] == "assistant" for m in conversation)
