"""ImagenTrainer.push_to_hub: the EMA weights, the steps and a sample grid go up with the card."""

import huggingface_hub
import torch

from imagen.cascade import Cascade, Imagen
from imagen.trainer import Dataset, ImagenTrainer


def test_push_to_hub_sends_the_ema_weights_steps_and_a_grid(tmp_path, monkeypatch, unet_factory, image_folder):
    sent = {}

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        sent["files"] = sorted(p.name for p in folder_path.iterdir())
        sent["card"] = (folder_path / "README.md").read_text()
        sent["cascade"] = Cascade.from_pretrained(folder_path)
        return "commit"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kwargs: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    imagen = Imagen(condition_on_text=False, unets=unet_factory(), image_sizes=16, timesteps=2)
    trainer = ImagenTrainer(imagen, verbose=False, ema_update_after_step=0, ema_update_every=1, ema_beta=0.5)
    trainer.add_train_dataset(Dataset(image_folder(tmp_path / "images", 4, size=16), 16), batch_size=2)
    trainer.fit(2)
    online = {k: v.clone() for k, v in trainer.imagen.state_dict().items()}
    assert trainer.push_to_hub("org/run", sample_kwargs={"batch_size": 2}) == "commit"
    assert sent["files"] == ["README.md", "config.json", "model.safetensors", "samples.png"]
    assert "| 1 | 2 |" in sent["card"] and "![samples](samples.png)" in sent["card"]
    uploaded = sent["cascade"].unets[0].state_dict()
    ema = trainer.get_ema_unet(1).state_dict()
    assert all(torch.equal(uploaded[k], ema[k]) for k in ema)
    assert any(not torch.equal(ema[k], trainer.imagen.unets[0].state_dict()[k]) for k in ema)  # EMA != online
    assert all(torch.equal(v, trainer.imagen.state_dict()[k]) for k, v in online.items())  # online restored
