from engine.protocol import TrainConfig
from engine.trainers.dpo import DPOTrainer
from engine.trainers.grpo import GRPOTrainer
from engine.trainers.kto import KTOTrainer
from engine.trainers.ppo import PPOConfig, PPOTrainer
from engine.trainers.reward import RewardTrainer
from engine.trainers.sft import SFTTrainer

__all__ = ["TrainConfig", "DPOTrainer", "KTOTrainer", "SFTTrainer", "PPOConfig", "PPOTrainer", "RewardTrainer", "GRPOTrainer"]
