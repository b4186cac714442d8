"""Training: Ray Train fine-tunes a model on exploit's SFT data (LoRA through PEFT, or full).

  settings  what is trained and how (``TrainSettings``)
  data      chat examples → token ids, with the loss on the assistant's tokens only
  recipe    one worker's training, setup to last checkpoint (torchtune's recipe layout)
  run       the driver: checks, tokenization with Ray Data, TorchTrainer, outputs
"""

from ste_ray.train.run import TrainInputError, TrainResult, loss_chart, run_training
from ste_ray.train.settings import TrainSettings

__all__ = ["TrainInputError", "TrainResult", "TrainSettings", "loss_chart", "run_training"]
