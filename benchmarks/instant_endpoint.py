"""A loopback OpenAI-compatible endpoint that answers at once, for measuring ste-ray's own overhead
(the driver, the actors, the writer), never a model. It plays an explorer that always does the same
thing: imagines a request, calls the API named in the trial prompt with no arguments, answers, says
Yes. It refuses structured outputs, so exploration runs unconstrained.

    python benchmarks/instant_endpoint.py PORT
"""

import re
import sys

from aiohttp import web

ACTION = re.compile(r"^Action: (.+)$", re.M)


async def chat(request: web.Request) -> web.Response:
    body = await request.json()
    if "structured_outputs" in body:
        return web.json_response({"error": {"message": "structured outputs are not supported"}}, status=400)
    last = body["messages"][-1]["content"]
    if last.startswith("Did you fulfill"):
        text = "Yes"
    elif last.startswith("Observation:"):
        text = "Thought: I know the answer.\nFinal Answer: done"
    elif "Now handle this request" in last:
        text = f"Thought: call it\nAction: {ACTION.search(last).group(1)}\nAction Input: {{}}"
    else:
        text = "Please do the thing this API does for me today."
    return web.json_response({"choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": text}}],
                              "usage": {"prompt_tokens": 100, "completion_tokens": 10}})


async def models(request: web.Request) -> web.Response:
    return web.json_response({"data": [{"id": "instant"}]})


if __name__ == "__main__":
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
