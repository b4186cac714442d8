"""How the model is fine-tuned."""

from __future__ import annotations

import dataclasses
from typing import Literal

from ste_ray.config import fail, option

# The paper's full fine-tuning of 7B models: 2 epochs, learning rate 2e-5, warmup ratio 0.03, examples
# of up to 2,048 words, effective batch 16. The embedded 135M model learns better with larger rates:
# fully fine-tuned on the pipeline's data, 2e-4 and 4e-4 tied on the development split and 1e-4
# trailed (results/pipeline_lr_sweep.json).
FULL_LEARNING_RATE = 2e-4
LORA_LEARNING_RATE = 5e-4


@dataclasses.dataclass
class TrainSettings:
    """Fine-tuning. Defaults: LoRA (rank 16 on every projection, learning rate 5e-4); ``--train.method
    full`` trains every weight at 2e-4 unless ``--train.learning_rate`` says otherwise (both rates are
    for the embedded model; the paper fine-tuned 7B models fully at 2e-5). Both: 2 epochs, warmup
    ratio 0.03, effective batch 16."""

    model: str = option("embedded", help="The model to fine-tune: 'embedded' (SmolLM2-135M-Instruct) or a Hugging "
                                         "Face causal-LM directory")
    method: Literal["lora", "full"] = option("lora", help="LoRA adapters (PEFT) or full fine-tuning")
    lora_rank: int = option(16, help="LoRA rank", ge=1)
    lora_alpha: int = option(32, help="LoRA alpha (scale = alpha / rank)", ge=1)
    lora_dropout: float = option(0.05, help="LoRA dropout", ge=0, le=0.9)
    lora_target_modules: list[str] = option(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        help="Module names that get LoRA adapters (each must exist in the model)")
    learning_rate: float | None = option(
        None, help="Peak learning rate (default: 5e-4 for LoRA, 2e-4 for full; the paper's 7B models: 2e-5)", gt=0)
    weight_decay: float = option(0.0, help="AdamW weight decay", ge=0)
    epochs: int = option(2, help="Passes over the training data (paper: 2)", ge=1)
    warmup_ratio: float = option(0.03, help="Share of the steps with a linear warmup (paper: 0.03)", ge=0, le=1)
    batch_size: int = option(1, help="Examples per worker per forward pass. On CPU 1 is fastest (no padding) and "
                                     "lightest (about 4.4 GiB per worker at 2,000 tokens with LoRA on the embedded "
                                     "model; 2 with padding: 7.4 GiB)", ge=1)
    gradient_checkpointing: bool = option(False, help="Recompute activations in the backward pass: 2.7 instead of "
                                                      "7.4 GiB per worker at 2 × 2,000 tokens, about 28% slower")
    effective_batch_size: int = option(16, help="Examples per optimizer step across workers (paper: 16); the gradient "
                                                "accumulation follows from it", ge=1)
    max_seq_len: int = option(2048, help="Longer examples are dropped (and counted), never cut (tool-mode prompts "
                                         "with five STE descriptions take about 1,300 tokens)", ge=32)
    max_steps: int = option(0, help="Stop after this many optimizer steps (0: run every epoch)", ge=0)
    checkpoint_every: int = option(20, help="Checkpoint every N optimizer steps, and at each epoch end", ge=1)
    num_workers: int = option(2, help="Ray Train workers (data-parallel)", ge=1)
    use_gpu: bool = option(False, help="One GPU per worker (NCCL, bf16)")
    cpus_per_worker: float = option(1.0, help="Ray CPU slots per worker", gt=0)
    resources_per_worker: dict = option(default_factory=dict, help="Extra Ray resources per worker, e.g. {A100: 1}")
    deepspeed: Literal["", "zero2", "zero3"] = option(
        "", help="DeepSpeed ZeRO stage for models that do not fit one device ('' = PyTorch DDP)")
    max_failures: int = option(2, help="Restarts from the last checkpoint after a worker dies", ge=0)
    merge: bool = option(False, help="Also write the merged model (LoRA folded into the weights) for serving")
    continual: bool = option(
        False, help="With per-batch data (sft/batch_<k>/): train round k from round k-1's weights on batch k, one "
        "adapter per round")
    seed: int = option(0, help="Seed of the initialisation and the data order")

    @property
    def peak_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return LORA_LEARNING_RATE if self.method == "lora" else FULL_LEARNING_RATE

    def validate(self) -> None:
        if self.effective_batch_size % (self.batch_size * self.num_workers):
            fail("effective_batch_size", f"must be a multiple of batch_size × num_workers "
                                         f"({self.batch_size} × {self.num_workers})")
