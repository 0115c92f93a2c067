"""The source documents' PyTorch classes, copied as written (seed 001), for rung-2 tests and docs."""
import torch.nn as nn
import torch.nn.functional as F


class ConvNet(nn.Module):  # as in the document: fc1 expects 64*7*7, but unpadded convs leave 64*5*5
    def __init__(self, padding=0):
        super(ConvNet, self).__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1, padding)
        self.conv2 = nn.Conv2d(32, 64, 3, 1, padding)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = x.view(-1, 64 * 7 * 7)
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return x
