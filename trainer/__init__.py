from trainer.trainer import Trainer, evaluate, loss_step

__all__ = ["Trainer", "evaluate", "loss_step"]
