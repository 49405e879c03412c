"""Model architectures: every public nn.Module class defined here can be named in arch.type."""
import torch.nn.functional as F
from torch import nn

from base import BaseModel


class MnistModel(BaseModel):
    """LeNet for 28x28 single-channel images, as in the original template (log-probabilities out)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, num_classes)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, training=self.training)
        return F.log_softmax(self.fc2(x), dim=1)


class DigitsModel(BaseModel):
    """A small CNN for scikit-learn's 8x8 digits (log-probabilities out, for nll_loss)."""

    def __init__(self, num_classes: int = 10, channels: int = 32, dropout: float = 0.25, batchnorm: bool = True):
        super().__init__()
        norm = nn.BatchNorm2d if batchnorm else lambda c: nn.Identity()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), norm(channels), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), norm(2 * channels), nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * channels * 16, 128), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return F.log_softmax(self.head(self.features(x)), dim=1)
