"""One Ray Train worker's fine-tuning, in the manner of torchtune's recipes: a class read top to
bottom. ``setup`` builds the model (LoRA through PEFT, or full), the tokenizer (with toolkens when
the data has them), the optimizer and the schedule, and restores the last checkpoint when Ray
restarts the run; ``train`` is the loop (data-parallel through DDP or DeepSpeed), with a checkpoint
every ``checkpoint_every`` steps and at each epoch end; each checkpoint holds the weights, the
tokenizer and the metrics, and the driver keeps the epoch end with the lowest validation loss."""

from __future__ import annotations

import json
import math
import os
import resource
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import ray.train
import torch
import torch.distributed as dist

from ste_ray.model import cpu_dtype
from ste_ray.storage import Location
from ste_ray.train.data import load_tokenizer, pad_batch

STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"
# What Ray Train ranks checkpoints by (lower is better): the validation loss at an epoch's end; a
# checkpoint within an epoch, or without validation data, ranks last with NOT_SCORED (a finite
# value: Ray's saved checkpoint state turns infinity into null, which it then cannot rank).
SELECTION = "selection_loss"
NOT_SCORED = 1e9


def peak_memory_gib() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class FineTuneRecipe:
    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device = torch.device("cuda", ray.train.torch.get_device().index) if cfg["use_gpu"] else torch.device("cpu")
        # bf16 autocast is faster than float32 where the CPU has bf16 kernels, and far slower where not
        # (the worker's own CPU decides, not the driver's).
        self.bf16_autocast = cfg["use_gpu"] or cpu_dtype() == "bfloat16"
        self.accumulation = cfg["effective_batch_size"] // (cfg["batch_size"] * self.world_size)
        self.steps_per_epoch = cfg["steps_per_epoch"]
        self.total_steps = cfg["total_steps"]
        # Restored from a checkpoint when Ray restarts the run:
        self.global_step = 0
        self.history: list[dict[str, Any]] = []  # one entry per optimizer step (and per epoch's validation)
        self.resumed_at: list[int] = []  # the step of each restart from a checkpoint

    # -----------------------------------------------------------------------------------------
    # Setup

    def setup(self) -> None:
        from transformers import AutoModelForCausalLM

        torch.manual_seed(self.cfg["seed"])
        checkpoint = ray.train.get_checkpoint()
        self.tokenizer = load_tokenizer(self.cfg["model_dir"], self.cfg["toolkens"])
        model = AutoModelForCausalLM.from_pretrained(self.cfg["model_dir"], dtype=torch.float32)
        if self.cfg["toolkens"]:
            self._add_toolken_embeddings(model)
        if self.cfg["gradient_checkpointing"]:
            # Each layer's activations are recomputed in the backward pass instead of kept.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()  # with LoRA the frozen embeddings' output must carry gradients
        with tempfile.TemporaryDirectory() as restored:
            start = self.cfg["start_weights"]
            if checkpoint is not None:
                checkpoint.to_directory(restored)
                start = restored
            elif start and "://" in start:  # the previous round's weights on object storage
                start = str(Location.of(start).download(Path(restored)))
            model = self._with_method(model, start)
            self.model = self._distribute(model)
            if checkpoint is not None:
                self._restore(Path(restored))

    def _add_toolken_embeddings(self, model) -> None:
        """One new embedding row per toolken, started at the mean of its API name's sub-word
        embeddings. The rows Transformers adds are the mean of the whole vocabulary: a few epochs
        leave such a toolken thousands of places down the logits (measured: rank 23,005 after 6
        steps), where a name-started one already scores like the name it stands for."""
        model.resize_token_embeddings(len(self.tokenizer))
        tables = {id(t.weight): t.weight for t in (model.get_input_embeddings(), model.get_output_embeddings())
                  if t is not None}  # one table when the model ties them
        with torch.no_grad():
            for token, api in self.cfg["toolkens"].items():
                pieces = self.tokenizer(api, add_special_tokens=False)["input_ids"]
                for table in tables.values():
                    table[self.tokenizer.convert_tokens_to_ids(token)] = table[pieces].mean(dim=0)

    def _with_method(self, model, weights_dir: str | None):
        """LoRA adapters (new, or the given ones: a checkpoint's or the previous round's) or, for
        full fine-tuning, the given weights."""
        if self.cfg["method"] == "full":
            if weights_dir:
                from safetensors.torch import load_file

                model.load_state_dict(load_file(str(Path(weights_dir) / "model.safetensors")), strict=False)
            return model
        from peft import LoraConfig, PeftModel, get_peft_model

        if weights_dir:
            return PeftModel.from_pretrained(model, weights_dir, is_trainable=True)
        toolken_ids = self.tokenizer.convert_tokens_to_ids(list(self.cfg["toolkens"])) if self.cfg["toolkens"] else None
        config = LoraConfig(r=self.cfg["lora_rank"], lora_alpha=self.cfg["lora_alpha"],
                            lora_dropout=self.cfg["lora_dropout"], target_modules=self.cfg["lora_target_modules"],
                            task_type="CAUSAL_LM",
                            trainable_token_indices={"embed_tokens": toolken_ids} if toolken_ids else None)
        return get_peft_model(model, config)

    def _distribute(self, model):
        """DDP (through Ray Train) or a DeepSpeed engine; the optimizer and schedule with it."""
        trainable = [p for p in model.parameters() if p.requires_grad]
        warmup = math.ceil(self.cfg["warmup_ratio"] * self.total_steps)

        def schedule(step: int) -> float:  # linear warmup, then linear decay to zero
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (self.total_steps - step) / max(1, self.total_steps - warmup))

        if self.cfg["deepspeed"]:
            import deepspeed

            stage = {"zero2": 2, "zero3": 3}[self.cfg["deepspeed"]]
            optimizer = torch.optim.AdamW(trainable, lr=self.cfg["learning_rate"], weight_decay=self.cfg["weight_decay"])
            engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config={
                "train_micro_batch_size_per_gpu": self.cfg["batch_size"],
                "gradient_accumulation_steps": self.accumulation,
                "zero_optimization": {"stage": stage},
                "bf16": {"enabled": self.cfg["use_gpu"]},
                "gradient_clipping": 1.0,
            })
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
            self.engine = engine
            return engine
        self.engine = None
        model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": False}) \
            if self.world_size > 1 else model.to(self.device)
        self.optimizer = torch.optim.AdamW(trainable, lr=self.cfg["learning_rate"], weight_decay=self.cfg["weight_decay"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        return model

    def _restore(self, directory: Path) -> None:
        state = json.loads((directory / STATE).read_text())
        self.global_step, self.history = state["global_step"], state["history"]
        self.resumed_at = state["resumed_at"] + [self.global_step]
        if self.engine is None:
            self.optimizer.load_state_dict(torch.load(directory / OPTIMIZER, map_location="cpu"))
        self.scheduler.load_state_dict(state["scheduler"])

    # -----------------------------------------------------------------------------------------
    # Training

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """The mean cross-entropy of the target tokens, and their count. Only the positions that
        predict a target go through the output layer (``logits_to_keep``): the full logits, sequence
        × vocabulary in float32 for the loss, were most of a worker's memory on tool-mode prompts."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        targets = batch["labels"][:, 1:]
        positions = (targets != -100).any(dim=0).nonzero().squeeze(-1)  # position p predicts token p + 1
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16_autocast):
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                logits_to_keep=positions).logits
        targets = targets[:, positions]
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        return loss, int((targets != -100).sum())

    def _batches(self, split: str, epoch: int):
        shard = ray.train.get_dataset_shard(split)
        pad_id = self.tokenizer.pad_token_id
        return shard.iter_torch_batches(batch_size=self.cfg["batch_size"], collate_fn=lambda b: pad_batch(b, pad_id),
                                        local_shuffle_buffer_size=256 if split == "train" else None,
                                        local_shuffle_seed=self.cfg["seed"] + epoch if split == "train" else None)

    def train(self) -> None:
        first_epoch = self.global_step // self.steps_per_epoch
        for epoch in range(first_epoch, self.cfg["epochs"]):
            if self.global_step >= self.total_steps:
                break
            skip = (self.global_step - epoch * self.steps_per_epoch) * self.accumulation  # resumed mid-epoch
            micro, tokens, losses, started = 0, 0, [], time.perf_counter()
            epoch_done = False
            self.model.train()
            for index, batch in enumerate(self._batches("train", epoch)):
                # Steps per epoch are whole effective batches; the shard's rest is read, not trained on.
                if index < skip or epoch_done:
                    continue
                boundary = (micro + 1) % self.accumulation == 0
                if self.engine is not None:
                    loss, _ = self._loss(batch)
                    self.engine.backward(loss)
                    self.engine.step()
                else:
                    # Gradients are averaged across workers once per optimizer step, not per micro-batch.
                    with self.model.no_sync() if hasattr(self.model, "no_sync") and not boundary else nullcontext():
                        loss, _ = self._loss(batch)
                        (loss / self.accumulation).backward()
                micro += 1
                tokens += int(batch["attention_mask"].sum())
                losses.append(float(loss.detach()))
                if micro % self.accumulation:
                    continue
                if self.engine is None:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.global_step += 1
                elapsed = time.perf_counter() - started
                entry = {"step": self.global_step, "epoch": epoch, "loss": self._mean(losses),
                         "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": self._sum(tokens) / elapsed,
                         "peak_memory_gib": peak_memory_gib()}
                self.history.append(entry)
                losses, tokens, started = [], 0, time.perf_counter()
                end_of_epoch = self.global_step % self.steps_per_epoch == 0 or self.global_step == self.total_steps
                if end_of_epoch:
                    entry["validation_loss"] = self.validation_loss(epoch)
                self.report(entry, checkpoint=end_of_epoch or self.global_step % self.cfg["checkpoint_every"] == 0)
                epoch_done = end_of_epoch

    def validation_loss(self, epoch: int) -> float | None:
        """The mean token loss over every worker's validation shard."""
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64)
        with torch.no_grad():
            for batch in self._batches("validation", epoch):
                loss, n_tokens = self._loss(batch)
                total += torch.tensor([float(loss) * n_tokens, n_tokens], dtype=torch.float64)
        self.model.train()
        if self.world_size > 1:
            dist.all_reduce(total)
        return float(total[0] / total[1]) if total[1] else None

    def _mean(self, values: list[float]) -> float:
        """The mean over every worker (each worker's micro-batch losses of the step)."""
        total = torch.tensor([sum(values), len(values)], dtype=torch.float64)
        if self.world_size > 1:
            dist.all_reduce(total)
        return float(total[0] / total[1])

    def _sum(self, value: float) -> float:
        total = torch.tensor([value], dtype=torch.float64)
        if self.world_size > 1:
            dist.all_reduce(total)
        return float(total[0])

    # -----------------------------------------------------------------------------------------
    # Checkpoints

    def report(self, metrics: dict[str, Any], checkpoint: bool) -> None:
        """Report the step's metrics (every worker: it is a barrier); with ``checkpoint``, rank 0
        also hands Ray the weights, optimizer and schedule state, and the metrics so far (DeepSpeed:
        every rank its shard)."""
        if not checkpoint:
            ray.train.report(metrics)
            return
        validation = metrics.get("validation_loss")
        metrics = {**metrics, SELECTION: validation if validation is not None else NOT_SCORED}
        with tempfile.TemporaryDirectory() as directory:
            if self.engine is not None:
                self.engine.save_checkpoint(directory, tag="deepspeed")
            if self.rank == 0:
                model = self.model.module if hasattr(self.model, "module") else self.model
                model.save_pretrained(directory)
                self.tokenizer.save_pretrained(directory)
                if self.engine is None:
                    torch.save(self.optimizer.state_dict(), Path(directory) / OPTIMIZER)
                (Path(directory) / STATE).write_text(json.dumps({
                    "global_step": self.global_step, "history": self.history, "scheduler": self.scheduler.state_dict(),
                    "resumed_at": self.resumed_at, "method": self.cfg["method"]}))
            written = self.rank == 0 or self.engine is not None
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory) if written else None)


def train_worker(cfg: dict[str, Any]) -> None:
    """The function each Ray Train worker runs."""
    if cfg["deepspeed"] and not cfg["use_gpu"]:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    recipe = FineTuneRecipe(cfg)
    recipe.setup()
    recipe.train()
