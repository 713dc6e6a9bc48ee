"""The Lightning and Hugging Face callbacks on real third-party models, trained by the real trainers on CPU:
the recorded task vectors equal the parameter differences exactly, full-batch GD passes T1, a wrong learning rate
fails it; a missing extra is one ImportError naming the install command.
"""

import importlib
import sys

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments, ViTConfig, ViTForImageClassification

from tvtheory.experiments.storage import load_tensors
from tvtheory.integrations import huggingface, lightning
from tvtheory.report import format_run

N = 32


class Snapshots:
    """The named parameters at the start and after every epoch (the test's own record to compare with)."""

    def __init__(self, model):
        self.model, self.taken = model, []

    def take(self):
        self.taken.append({n: p.detach().clone() for n, p in self.model.named_parameters()})


def assert_exact_task_vectors(folder, snaps, names):
    for k in range(1, len(snaps.taken)):
        tau = load_tensors(folder / f"tau_epoch{k:03d}.safetensors")
        assert sorted(tau) == sorted(names)
        assert all(torch.equal(tau[n], snaps.taken[k][n] - snaps.taken[0][n]) for n in names)


# --------------------------------------------------------------------------------------------------------
# Hugging Face Trainer, transformers ViT
# --------------------------------------------------------------------------------------------------------

class Images(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(N, 1, 8, 8, generator=g), torch.randint(0, 3, (N,), generator=g)

    def __len__(self):
        return N

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


class SnapshotCallback(TrainerCallback):
    def __init__(self, snaps):
        self.snaps = snaps

    def on_train_begin(self, args, state, control, **kwargs):
        self.snaps.take()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.snaps.take()


def train_vit(folder, lr_stated=None):
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=3, attn_implementation="eager"))
    args = TrainingArguments(output_dir=str(folder / "trainer"), use_cpu=True, report_to=[], save_strategy="no",
                             logging_strategy="no", disable_tqdm=True, num_train_epochs=2, seed=0,
                             per_device_train_batch_size=N, learning_rate=0.1, optim="sgd",
                             lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0)
    snaps = Snapshots(model)
    recorder = huggingface.TaskVectorCallback(folder / "run", select="vit.layers.", lr=lr_stated,
                                              config={"task": "random images"})
    Trainer(model=model, args=args, train_dataset=Images(), callbacks=[SnapshotCallback(snaps), recorder]).train()
    return recorder, snaps, [n for n, _ in model.named_parameters() if n.startswith("vit.layers.")]


def test_hugging_face_trainer_full_batch_gd(tmp_path):
    callback, snaps, names = train_vit(tmp_path)
    assert len(snaps.taken) == 3
    assert_exact_task_vectors(tmp_path / "run", snaps, names)
    run = callback.recorder.summary()
    assert [r["steps"] for r in run["epochs"]] == [1, 1]
    assert run["T1"]["holds"]
    assert run["versions"]["transformers"] and run["config"]["training_arguments"]["optim"] == "sgd"
    assert run["seed"] == 0 and run["config"]["task"] == "random images"
    print(format_run(run))


def test_hugging_face_trainer_wrong_learning_rate_fails_t1(tmp_path):
    callback, _, _ = train_vit(tmp_path, lr_stated=0.1 * (1 + 1e-4))   # float32: u = 6e-8
    assert callback.recorder.t1["holds"] is False


def test_torch_optimizer_unwraps_accelerate():
    inner = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)

    class Wrapped:
        optimizer = inner

    assert huggingface.torch_optimizer(Wrapped()) is inner
    with pytest.raises(ValueError, match="cannot find the torch optimizer"):
        huggingface.torch_optimizer(object())


# --------------------------------------------------------------------------------------------------------
# Lightning
# --------------------------------------------------------------------------------------------------------

class Classifier(pl.LightningModule):
    def __init__(self, lr=0.1, weight_decay=0.0):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(6, 8), nn.GELU())
        self.head = nn.Linear(8, 3)
        self.lr, self.weight_decay = lr, weight_decay

    def forward(self, x):
        return self.head(self.encoder(x))

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class SnapshotLightning(pl.Callback):
    def __init__(self, snaps):
        self.snaps = snaps

    def on_train_start(self, trainer, module):
        self.snaps.take()

    def on_train_epoch_end(self, trainer, module):
        self.snaps.take()


def train_lightning(folder, **kwargs):
    module = Classifier(**kwargs)
    g = torch.Generator().manual_seed(2)
    data = torch.utils.data.TensorDataset(torch.randn(N, 6, generator=g), torch.randint(0, 3, (N,), generator=g))
    snaps = Snapshots(module)
    callback = lightning.TaskVectorCallback(folder, select="encoder.", seed=0)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[SnapshotLightning(snaps), callback])
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=N))
    return callback, snaps


def test_lightning_full_batch_gd(tmp_path):
    callback, snaps = train_lightning(tmp_path)
    assert_exact_task_vectors(tmp_path, snaps, ["encoder.0.weight", "encoder.0.bias"])
    run = callback.recorder.summary()
    assert [r["steps"] for r in run["epochs"]] == [1, 1]
    assert run["T1"]["holds"] and run["versions"]["lightning"]


def test_lightning_weight_decay_fails_t1(tmp_path):
    callback, _ = train_lightning(tmp_path, weight_decay=1e-2)
    assert callback.recorder.t1["holds"] is False


@pytest.mark.parametrize(("name", "missing", "extra"), [("lightning", "lightning.pytorch", "lightning"),
                                                        ("huggingface", "transformers", "hf")])
def test_a_missing_extra_names_the_install_command(monkeypatch, name, missing, extra):
    monkeypatch.setitem(sys.modules, missing, None)                     # import of it raises ImportError
    monkeypatch.delitem(sys.modules, f"tvtheory.integrations.{name}")
    with pytest.raises(ImportError, match=rf"pip install tvtheory\[{extra}\]"):
        importlib.import_module(f"tvtheory.integrations.{name}")
    monkeypatch.undo()
    assert importlib.import_module(f"tvtheory.integrations.{name}").TaskVectorCallback
