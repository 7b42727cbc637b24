"""Glue patch for a copy of jianghoucheng/AlphaEdit (commit f5248d3): CPU, transformers 5, no network, SmolLM2.

Run it inside the copy (docs/FIDELITY.md): every change is to glue (imports, device, the decoder layer's output
type, a settings file); none touches the algorithm. Each replacement must match exactly once.
"""
import json
from pathlib import Path


def sub(path, old, new):
    text = Path(path).read_text()
    assert text.count(old) == 1, (path, old)
    Path(path).write_text(text.replace(old, new))


# 1. no network: `datasets` is not installed; C is handed in through AlphaEdit_main.COV_CACHE
sub("rome/layer_stats.py", "from datasets import load_dataset\n",
    "try:  # fidelity patch: `datasets` is not installed (no network); C is handed in through COV_CACHE\n"
    "    from datasets import load_dataset\nexcept ImportError:\n    load_dataset = None\n")
# 2. an unused import of a package that is not installed
sub("rome/compute_v.py", "from matplotlib.style import context\n",
    "# from matplotlib.style import context  # fidelity patch: unused import; matplotlib is not installed\n")
# 3. CPU: every hard-coded "cuda" becomes DEVICE (cuda when there is one)
device = 'DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # fidelity patch: CPU when there is no GPU\n'
for name in ("AlphaEdit/AlphaEdit_main.py", "AlphaEdit/compute_z.py"):
    text = Path(name).read_text()
    text = text.replace('.to("cuda")', ".to(DEVICE)").replace('device="cuda"', "device=DEVICE").replace(".cuda()", ".to(DEVICE)")
    Path(name).write_text(text.replace("import torch\n", "import torch\n" + device, 1))
# 4. transformers 5: a Llama decoder layer returns its hidden states as a tensor, not a tuple
z = "AlphaEdit/compute_z.py"
sub(z, "        if cur_layer == hparams.layer_module_tmp.format(layer):\n",
    "        if cur_layer == hparams.layer_module_tmp.format(layer):\n"
    "            hidden = cur_out[0] if isinstance(cur_out, tuple) else cur_out  # fidelity patch: transformers 5 returns a tensor\n")
for old, new in (("target_init = cur_out[0][0,", "target_init = hidden[0,"),
                 ("len(lookup_idxs)!=len(cur_out[0])", "len(lookup_idxs)!=len(hidden)"),
                 ("cur_out[0][idx, i, :]", "hidden[idx, i, :]"),
                 ("cur_out[0][i, idx, :]", "hidden[i, idx, :]")):
    sub(z, old, new)
sub(z, "output=tr[hparams.layer_module_tmp.format(loss_layer)].output[0]\n",
    "output=tr[hparams.layer_module_tmp.format(loss_layer)].output\n"
    "        output = output[0] if isinstance(output, tuple) else output  # fidelity patch: transformers 5 returns a tensor\n")
# 5. the published Llama3-8B hyperparameters with SmolLM2-135M's layers: R = 1-5, loss at the last of 30 layers
settings = json.loads(Path("hparams/AlphaEdit/Llama3-8B.json").read_text())
settings.update(model_name="SmolLM2-135M-Instruct", layers=[1, 2, 3, 4, 5], v_loss_layer=29)
Path("hparams/AlphaEdit/SmolLM2-135M-Instruct.json").write_text(json.dumps(settings, indent=4) + "\n")
