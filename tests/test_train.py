"""Training with Ray Train on the embedded model, tiny settings: the masked loss (toolkens as single
tokens); the train job as users run it, fully fine-tuning with toolkens (the pipeline's default
method), a training worker killed mid-run and the run resumed from its checkpoint, the best
checkpoint kept, a rerun that does nothing, the result served through the OpenAI API behind a key;
a LoRA adapter that vLLM loads and that changes its output; bad input refused before any worker
starts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ste_ray.benchmark import Benchmark
from ste_ray.exploit.sft import FormatExamples, catalogue, toolken
from ste_ray.model import resolve_model
from ste_ray.schema import SFTExample, write_records
from ste_ray.serve import servable_model
from ste_ray.storage import Location
from ste_ray.train import TrainInputError, TrainSettings, run_training
from ste_ray.train.data import IGNORE, load_tokenizer, tokenize_chat
from ste_ray.train.run import check_model, check_workers, find_rounds
from tests.conftest import stop_group
from tests.exploration_data import faithful_trials

ROOT = Path(__file__).resolve().parents[1]
VLLM_LORA = '''
import json, os, sys
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
from vllm import LLM, SamplingParams
from vllm.lora.request import LoRARequest
from ste_ray.model import cpu_dtype
if __name__ == "__main__":
    model, adapter, messages = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    llm = LLM(model, enable_lora=True, max_lora_rank=16, max_model_len=2048, enforce_eager=True, dtype=cpu_dtype())
    params = SamplingParams(temperature=0, max_tokens=48)
    base = llm.chat(messages, params)[0].outputs[0].text
    tuned = llm.chat(messages, params, lora_request=LoRARequest("tuned", 1, adapter))[0].outputs[0].text
    print("RESULT " + json.dumps({"base": base, "tuned": tuned}))
'''


def sft_examples(toolkens: bool, copies: int) -> list[SFTExample]:
    """Tool-mode examples of the faithful trials (one tool in the prompt: short sequences), repeated."""
    trials, specs = faithful_trials()
    formatter = FormatExamples(catalogue(specs, Benchmark.load()), {s.name: [] for s in specs}, toolkens=toolkens,
                               add_tool_response=False, seed=0)
    examples = []
    for copy in range(copies):
        for i, t in enumerate(trials):
            row = {"example_id": f"{copy}-{i}", "api": t.api, "seed_key": f"{copy}-{i}", "query": t.query,
                   "paraphrase": False, "action_input": t.steps[0].action_input, "observation": "", "final_answer": "",
                   "split": "train"}
            examples.append(SFTExample(**formatter.example(row, [])))
    return examples


def write_sft(directory: Path, toolkens: bool, copies: int = 2) -> Path:
    examples = sft_examples(toolkens, copies)
    write_records(directory / "train" / "part-0.parquet", examples, SFTExample)
    write_records(directory / "validation" / "part-0.parquet", examples[:4], SFTExample)
    if toolkens:
        apis = sorted({e.api for e in examples})
        (directory / "toolkens.json").write_text(json.dumps({a: toolken(a) for a in apis}))
    return directory


def test_the_loss_is_on_the_assistant_tokens_only():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("embedded"))
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What date is 30 days after 2023-05-01?"},
                {"role": "assistant", "content": 'Action: add_date\nAction Input: {"date": "2023-05-01", "days": 30}'},
                {"role": "user", "content": 'Observation: {"date": "2023-05-31"}'},
                {"role": "assistant", "content": "Final Answer: 2023-05-31"}]
    ids, labels = tokenize_chat(tokenizer, messages)
    assert ids == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    learned = tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE])
    assert learned == ('Action: add_date\nAction Input: {"date": "2023-05-01", "days": 30}<|im_end|>\n'
                       "Final Answer: 2023-05-31<|im_end|>\n")
    assert all(label == IGNORE for label in labels[:len(tokenizer.apply_chat_template(
        messages[:2], tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"])])
    # A toolken is one new token of the training data, as of the model: its embedding is what learns.
    with_toolkens = load_tokenizer(resolve_model("embedded"), [toolken("add_date")])
    messages[2]["content"] = messages[2]["content"].replace("add_date", toolken("add_date"))
    ids, labels = tokenize_chat(with_toolkens, messages)
    new_id = with_toolkens.convert_tokens_to_ids(toolken("add_date"))
    assert new_id == len(tokenizer) and labels.count(new_id) == 1


def test_bad_input_is_refused_before_training(ray_session, tmp_path):
    with pytest.raises(TrainInputError, match="is not a directory"):
        find_rounds(tmp_path / "absent", continual=False)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(TrainInputError, match="holds no Parquet files"):
        find_rounds(tmp_path / "empty", continual=False)
    with pytest.raises(TrainInputError, match="needs per-batch data"):
        find_rounds(write_sft(tmp_path / "sft", toolkens=False), continual=True)
    no_tokenizer = tmp_path / "model"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text((Path(resolve_model("embedded")) / "config.json").read_text())
    with pytest.raises(TrainInputError, match="has no usable tokenizer"):
        check_model(TrainSettings(model=str(no_tokenizer)))
    with pytest.raises(TrainInputError, match="qkv_proj not in .*q_proj"):
        check_model(TrainSettings(lora_target_modules=["q_proj", "qkv_proj"]))
    with pytest.raises(TrainInputError, match="can never be placed"):
        check_workers(TrainSettings(num_workers=3, cpus_per_worker=4, effective_batch_size=24))
    result = subprocess.run([sys.executable, "jobs/train.py", "--input", str(tmp_path / "absent"), "--output",
                             str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"error: input: {tmp_path / 'absent'} is not a directory (give exploit's sft/ output)"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str]:
    """The train job as users run it, with the pipeline's default method: full fine-tuning, here with
    toolkens and gradient checkpointing (the recompute path trains and resumes too), 2 workers, 2
    epochs over 12 short examples (6 steps), every weight and the optimizer's state in each
    checkpoint. A training worker is killed once the first checkpoint is registered: Ray Train
    restarts the workers from it. Returns the output and the job's console."""
    root = tmp_path_factory.mktemp("train")
    sft = write_sft(root / "sft", toolkens=True)
    args = [sys.executable, "jobs/train.py", "--input", str(sft), "--output", str(root / "out"), "--train.method", "full",
            "--train.gradient_checkpointing", "--train.batch_size", "2", "--train.effective_batch_size", "4",
            "--train.checkpoint_every", "2", "--ray.include_dashboard", "false"]
    console = root / "console.txt"
    with console.open("w") as out:
        job = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        snapshot = root / "out" / "ray_train" / "train" / "checkpoint_manager_snapshot.json"
        deadline = time.monotonic() + 600
        # Checkpoints Ray Train has registered (a stored one may not be yet).
        while not (snapshot.is_file() and json.loads(snapshot.read_text())["checkpoint_results"]):
            assert job.poll() is None, console.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.5)
        workers = [p for p in psutil.process_iter(["cmdline"]) if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])]
        assert workers
        workers[-1].kill()
        assert job.wait(timeout=900) == 0, console.read_text()[-3000:]
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already holds this finished run (6 steps); nothing to do" in again.stdout
    return root / "out", console.read_text()


def test_full_fine_tuning_resumes_after_a_killed_worker_and_keeps_the_best_checkpoint(trained):
    output, console = trained
    metrics = json.loads((output / "metrics.json").read_text())
    history = metrics["history"]
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6] and metrics["examples"] == 12  # every step, each once
    assert metrics["resumed_at"] and metrics["resumed_at"][0] >= 1  # restarted from a checkpoint, not from scratch
    assert "resumed from checkpoints at steps" in console
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    validation = {h["step"]: h["validation_loss"] for h in history if "validation_loss" in h}
    assert list(validation) == [3, 6]  # one per epoch
    assert metrics["exported_step"] == min(validation, key=validation.get)  # the lowest validation loss is kept
    assert all(h["tokens_per_s"] > 0 and h["peak_memory_gib"] > 0 for h in history)
    model_dir = Path(servable_model(str(output)))
    assert model_dir == output / "model" and not (output / "adapter").exists() and (output / "loss.png").is_file()


def test_the_toolkens_are_new_tokens_of_the_saved_tokenizer(trained):
    from transformers import AutoTokenizer

    output, _ = trained
    tokenizer = AutoTokenizer.from_pretrained(output / "model")
    base = AutoTokenizer.from_pretrained(resolve_model("embedded"))
    for name in json.loads((output.parent / "sft" / "toolkens.json").read_text()).values():
        ids = tokenizer(name, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] >= len(base)  # one new token each
        assert tokenizer.decode(ids) == name


def test_a_toolken_starts_from_its_name_and_is_learned_to_the_top_of_the_logits(trained):
    """Where the trained call writes its toolken ("Action: " then the token), the trained model
    ranks the right toolken among its first few choices. A toolken started from the vocabulary's mean
    embedding (Transformers' default) ranked 23,005th after these 6 steps."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output, _ = trained
    tokenizer = AutoTokenizer.from_pretrained(output / "model")
    model = AutoModelForCausalLM.from_pretrained(output / "model", dtype=torch.float32)
    messages = json.loads(sft_examples(toolkens=True, copies=1)[0].messages)[:2]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt + "Action: ", add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    right = tokenizer.convert_tokens_to_ids(toolken("add_date"))
    assert int((logits > logits[right]).sum()) < 5


@pytest.mark.engine
def test_the_served_model_answers_through_the_openai_api_behind_a_key(trained, engine, tmp_path):
    """jobs/serve.py as users run it, on the fully fine-tuned output (its tokenizer with the toolkens),
    behind an API key: it writes the call in the trained format, where the base model (the session's
    engine) answers otherwise."""
    import os
    import signal
    import socket
    import urllib.error
    import urllib.request

    output, _ = trained
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "jobs/serve.py", "--engine.port", str(port), "--serve.api_key_env",
                               "STE_SERVE_KEY", "--serve.models", json.dumps({"tuned": str(output)}),
                               "--ray.include_dashboard", "false"],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "STE_SERVE_KEY": "k3y"},
                              start_new_session=True)
    messages = json.loads(sft_examples(toolkens=True, copies=1)[0].messages)[:2]

    def ask(url: str, model: str, key: str | None) -> str:
        request = urllib.request.Request(url + "/chat/completions", method="POST", data=json.dumps(
            {"model": model, "messages": messages, "max_tokens": 40, "temperature": 0}).encode(),
            headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())["choices"][0]["message"]["content"]

    try:
        deadline = time.monotonic() + 600
        while "serving; Ctrl-C to stop" not in (tmp_path / "serve.log").read_text():
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        url = f"http://127.0.0.1:{port}/v1"
        with pytest.raises(urllib.error.HTTPError) as refused:
            ask(url, "tuned", None)
        assert refused.value.code == 401
        tuned = ask(url, "tuned", "k3y")
        assert tuned.startswith("Action: ") and 'Action Input: {"date": "2023-05-01"' in tuned, repr(tuned)  # as trained
        assert tuned != ask(engine.base_url, engine.model, None)
    finally:
        stop_group(server, signal.SIGINT, timeout_s=60)
        log.close()


@pytest.mark.engine
def test_a_lora_adapter_loads_in_vllm_and_changes_its_output(ray_session, tmp_path):
    """LoRA (rank 16 on every projection; the train job's default method): the adapter PEFT writes
    loads in vLLM's own LoRA support (how a cluster serves adapters from object storage) and makes
    the model write the call it was trained on."""
    sft = write_sft(tmp_path / "sft", toolkens=False)
    settings = TrainSettings(method="lora", batch_size=2, effective_batch_size=4, epochs=2)
    result = run_training(sft, tmp_path / "out", settings, progress=False)
    assert [h["step"] for h in result.history] == [1, 2, 3, 4, 5, 6] and result.history[-1]["loss"] < result.history[0]["loss"]
    adapter = tmp_path / "out" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 16
    messages = json.loads(sft_examples(toolkens=False, copies=1)[0].messages)[:2]
    run = subprocess.run([sys.executable, "-c", VLLM_LORA, resolve_model("embedded"), str(adapter), json.dumps(messages)],
                         capture_output=True, text=True, timeout=600)
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, run.stderr[-3000:]
    outputs = json.loads(line.removeprefix("RESULT "))
    assert outputs["tuned"] != outputs["base"]
    assert outputs["tuned"].startswith("Action: add_date\nAction Input: {")  # what it was trained to write


def test_a_fully_fine_tuned_output_is_served_from_its_model_directory(tmp_path):
    """A training output without an adapter (--train.method full) serves train/model/; a Hugging Face
    directory and a packaged model name are served as given."""
    (tmp_path / "train" / "model").mkdir(parents=True)
    (tmp_path / "train" / "model" / "config.json").write_text("{}")
    assert servable_model(str(tmp_path / "train")) == Location.of(tmp_path / "train" / "model").uri()
    assert servable_model(str(tmp_path / "train" / "model")) == str(tmp_path / "train" / "model")
    assert servable_model("embedded") == "embedded"
