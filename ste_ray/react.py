"""The ReAct format, in one place: how a tool is shown to a model, how a model calls it, and how
its text is read back.

- the STE tool block (``API_name: ... / Description: ...``);
- the call (``Action: <name>`` / ``Action Input: {json}``), then ``Observation: ...`` and, at the
  end, ``Final Answer: ...``;
- the trial prompt and reflection question of exploration, and ``parse_turn``, the explorer's
  lenient reader, which turns anything it cannot execute into a corrective observation;
- the tool-mode prompt (tool descriptions, then the user query): what evaluation asks, what the
  fine-tuning data teaches (exploit formats its examples with it) and what serving answers;
- ``parse_output``, the paper's own reader, kept faithful so that its published prediction files
  score to its published figures.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re

# ---------------------------------------------------------------------------------------------
# Tools and calls


def ste_block(name: str, description: str) -> str:
    """A tool as the STE prompts show it."""
    return f"API_name: {name}\nDescription: {description}"


def format_call(action: str, action_input: str) -> str:
    """One call, as a model writes it."""
    return f"Action: {action}\nAction Input: {action_input}"


STOP = ["Observation:", "\nObservation"]  # a model must stop where the tool's result would begin

# ---------------------------------------------------------------------------------------------
# Exploration: the trial and the reflection


def trial_prompt(api_name: str, query: str) -> str:
    return (f'Now handle this request: "{query}"\n'
            "You can call the API. Use exactly this format:\n"
            "Thought: what to do next\n"
            f"Action: {api_name}\n"
            "Action Input: a JSON object with the arguments\n"
            "Then stop: the Observation (the API's result) will be given to you. "
            "When you can answer the request, write:\n"
            "Thought: I know the answer.\n"
            "Final Answer: the answer to the request")


def reflection_prompt(query: str) -> str:
    return f'Did you fulfill the request "{query}"? Answer Yes or No.'


def parse_reflection(text: str) -> bool | None:
    match = re.search(r"\b(yes|no)\b", text, flags=re.I)
    return None if match is None else match.group(1).lower() == "yes"


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
    """Read one ReAct turn of the explorer. Anything that cannot be executed yields ``error``:
    the corrective message the explorer sees as its Observation."""
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


# ---------------------------------------------------------------------------------------------
# Tool mode: the prompt evaluation asks, fine-tuning teaches and serving answers

SYSTEM_PROMPT = "You are a helpful assistant."

INSTRUCTIONS = (
    "Answer the user's query as well as you can. You can call the APIs described below.\n\n{descriptions}\n\n"
    "To call an API, write \"Action:\" followed by the API's name, then \"Action Input:\" followed by its "
    "arguments as one JSON object. The API's result will be given to you after \"Observation:\". Make one "
    "call at a time, never a list of calls.\n\n"
    "The only names that may follow \"Action:\" are:\n{names}\n\n"
    "Always use this format:\n\n"
    "User Query: the query to answer\n"
    "Action: the API's name\n"
    "Action Input: {{\"key_1\": \"value_1\", ..., \"key_n\": \"value_n\"}}\n"
    "Observation: the API's result\n"
    "... (Action, Action Input and Observation can repeat)\n"
    "Final Answer: the answer to the query\n\n"
    "Once you have enough information, write the Final Answer.")


def tool_prompt(tools: list[tuple[str, str]], query: str, demos: list[dict[str, str]] = ()) -> str:
    """The user message of tool mode: the ``(name, description)`` tools in the given order, then
    any demonstrations (dicts with query, action, action_input), then the query. The descriptions
    come first so that an engine's prefix cache computes what queries share once."""
    prompt = INSTRUCTIONS.format(descriptions="\n\n".join(ste_block(n, d) for n, d in tools),
                                 names="\n".join(n for n, _ in tools))
    if demos:
        prompt += ("\n\nHere are some examples:\n\n"
                   + "---\n".join(f"User Query: {d['query']}\n{format_call(d['action'], d['action_input'])}\n"
                                  for d in demos)
                   + "Now it is your turn.")
    return prompt + f"\n\nUser Query: {query}"


def tool_mode_messages(tools: list[tuple[str, str]], query: str, demos: list[dict[str, str]] = ()) -> list[dict]:
    """The chat messages of tool mode, up to the model's answer."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": tool_prompt(tools, query, demos)}]


# ---------------------------------------------------------------------------------------------
# The paper's reader of a model's answer (scoring)


@dataclasses.dataclass
class ParsedOutput:
    kind: str  # "call" | "no_call" (a Final Answer without a call) | "error"
    action: str | None = None
    action_input: str | None = None
    reason: str | None = None  # why it is an error


def _strip_literal_newlines(text: str) -> str:
    # Models trained on JSON-escaped data end lines with a literal backslash-n; the paper drops them.
    text = text.strip()
    while text.endswith("\\n"):
        text = text[:-2]
    return text.strip()


def parse_output(text: str, api_names: list[str]) -> ParsedOutput:
    """Read one model output as the paper's evaluation does: toolkens (``<tool_NAME>``) are
    accepted, an unknown API name is grounded to the closest known one, and the arguments are the
    text from the first "{" to the last "}" (outer braces normalised to one pair)."""
    text = text.strip()
    if "Final Answer:" in text:
        text = text.split("Final Answer:")[0].strip()
        if "Action Input:" not in text:
            return ParsedOutput("no_call")
    if text.count("Action Input:") != 1:
        return ParsedOutput("error", reason="no Action Input" if "Action Input:" not in text
                            else "more than one Action Input")
    head, arguments = (_strip_literal_newlines(part) for part in text.split("Action Input:"))
    if head.count("Action:") != 1:
        return ParsedOutput("error", reason="no Action" if "Action:" not in head else "more than one Action")
    action = _strip_literal_newlines(head.split("Action:")[1])
    action = action.replace("<tool_", "").strip("<>")
    if action not in api_names:
        closest = difflib.get_close_matches(action, api_names, n=1, cutoff=0.001)
        if not closest:
            return ParsedOutput("error", action=action, reason="the API name resembles no known API")
        action = closest[0]
    left, right = arguments.find("{"), arguments.rfind("}")
    if left < 0 or right < 0 or left >= right:
        return ParsedOutput("error", action=action, reason="no JSON object in the Action Input")
    # The paper keeps one pair of outer braces: "{{...}}" and "{...}}" both become "{...}".
    action_input = "{" + arguments[left:right + 1].strip("{}") + "}"
    try:
        json.loads(action_input)
    except json.JSONDecodeError:
        return ParsedOutput("error", action=action, action_input=action_input, reason="the Action Input is not JSON")
    return ParsedOutput("call", action=action, action_input=action_input)
