"""The equal training budget shared by the comparison tables (2 to 5).

Every run of a table trains for ``EPOCHS`` epochs with its family's recipe otherwise
unchanged (batch 128, random crop with 4 pixels of padding + horizontal flip, linear
warm-up then cosine decay; SGD + Nesterov for the CNNs, AdamW for ViT and MLP-Mixer, as
their config files set). 10 epochs was chosen so that the runs fit a 2-core CPU: ResNet-20
trains at about 300 images/s there (25 min), ResNet-56 at about 110 (75 min). It is a
budget, not a converged schedule: the configs' own ``num_epochs`` (30 to 200) are the full
schedules a GPU/TPU user runs with the same command, without the override.
"""

EPOCHS = 10
# One warm-up epoch for every run: the ViT/Mixer configs' 5 would be half the budget.
OVERRIDES = {"num_epochs": EPOCHS, "optim.warmup_epochs": 1.0}
