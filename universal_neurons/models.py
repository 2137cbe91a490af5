"""One loader for every model the pipeline touches: `load_model(name, device, dtype)`.

A name resolves, in this order, to
  1. a zoo model  (toy-gpt2-a .. e, toy-gpt2-tiny-a .. e): trained on first use, see zoo.py;
  2. a local Hugging Face folder (config.json + weights + tokenizer files);
  3. a hub model: the paper's short names (stanford-gpt2-small-a .. e, stanford-gpt2-medium-a .. e,
     pythia-160m, pythia-160m-seed1 .. 3) and any other TransformerLens alias map to hub ids; any
     other name is taken as a hub id.
The model is a TransformerLens 4 `TransformerBridge` with compatibility mode on (LayerNorm folded
into the next weights, writing weights and unembedding centred), as the paper's HookedTransformer
defaults were, so weight statistics mean what they meant in the paper. Hook names used downstream:
blocks.{l}.mlp.hook_pre / hook_post [batch, pos, d_mlp], ln_final.hook_scale [batch, pos, 1],
blocks.{l}.attn.hook_q / hook_k / hook_v / hook_z / hook_pattern, blocks.{l}.hook_resid_pre.
Two attributes are added: `model.model_name` (the name given) and `model.family` ('gpt2', 'pythia',
'toy', ...: the folder under $DATASET_DIR whose token datasets the model can read).
"""
from __future__ import annotations

import hashlib

import json
import os
import socket
import warnings
from functools import lru_cache
from pathlib import Path

from .device import resolve_device, resolve_dtype
from .errors import UserError, is_checking, would

_SMALL = ["alias-gpt2-small-x21", "battlestar-gpt2-small-x49", "caprica-gpt2-small-x81",
          "darkmatter-gpt2-small-x343", "expanse-gpt2-small-x777"]
_MEDIUM = ["arwen-gpt2-medium-x21", "beren-gpt2-medium-x49", "celebrimbor-gpt2-medium-x81",
           "durin-gpt2-medium-x343", "eowyn-gpt2-medium-x777"]
POLYPYTHIA_SIZES = ("14m", "31m", "70m", "160m", "410m")
PAPER_MODELS = {
    **{f"stanford-gpt2-small-{s}": f"stanford-crfm/{h}" for s, h in zip("abcde", _SMALL)},
    **{f"stanford-gpt2-medium-{s}": f"stanford-crfm/{h}" for s, h in zip("abcde", _MEDIUM)},
    # Pythia and the PolyPythias suite: pythia-<size> (seed 0) and pythia-<size>-seed1..9
    **{f"pythia-{size}": f"EleutherAI/pythia-{size}" for size in POLYPYTHIA_SIZES},
    **{f"pythia-{size}-seed{i}": f"EleutherAI/pythia-{size}-seed{i}" for size in POLYPYTHIA_SIZES for i in range(1, 10)},
    "gpt2": "openai-community/gpt2", "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
}
HUB_HOST = "huggingface.co"

# Seed families: models trained alike from different random seeds, seed a (the rows) first.
SEED_FAMILIES = {
    "stanford-gpt2-small": [f"stanford-gpt2-small-{s}" for s in "abcde"],
    "stanford-gpt2-medium": [f"stanford-gpt2-medium-{s}" for s in "abcde"],
    **{f"pythia-{size}": [f"pythia-{size}"] + [f"pythia-{size}-seed{i}" for i in range(1, 10)] for size in POLYPYTHIA_SIZES},
    "toy-gpt2": [f"toy-gpt2-{s}" for s in "abcde"],
    "toy-gpt2-tiny": [f"toy-gpt2-tiny-{s}" for s in "abcde"],
    "toy-gpt2-deep": [f"toy-gpt2-deep-{s}" for s in "abcde"],
}


def family_members(family: str, n_seeds: int | None = None) -> list[str]:
    """The seeds of `family`, seed a first: a name of SEED_FAMILIES, or a local folder whose
    subfolders are model folders (one seed each, in natural order of their names: seed2 before
    seed10). n_seeds: only the first n."""
    import re

    if family in SEED_FAMILIES:
        members = SEED_FAMILIES[family]
    elif is_local_folder(family):
        raise UserError(f"--family {family!r} is one model folder; give the folder that holds the seeds' folders "
                        f"(or list them with --models)")
    elif Path(family).is_dir():
        natural = lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]  # noqa: E731
        members = [str(p) for p in sorted(Path(family).iterdir(), key=natural) if is_local_folder(str(p))]
        if len(members) < 2:
            raise UserError(f"--family {family!r}: a folder of seeds needs at least two model folders (with "
                            f"config.json) in it, found {len(members)}")
    else:
        raise UserError(f"unknown seed family {family!r}; choose from {', '.join(SEED_FAMILIES)}, or give a folder "
                        f"whose subfolders are the seeds' model folders")
    if n_seeds is not None:
        if not 2 <= n_seeds <= len(members):
            raise UserError(f"--n_seeds must be in [2, {len(members)}] for family {family!r}, got {n_seeds}")
        members = members[:n_seeds]
    return list(members)


@lru_cache(maxsize=1)
def _transformer_lens_aliases() -> dict[str, str]:
    """TransformerLens' own alias table (short name -> hub id), read without triggering its warnings."""
    import transformer_lens

    path = Path(transformer_lens.__file__).parent / "tools" / "model_registry" / "data" / "model_aliases.json"
    try:
        table = json.loads(path.read_text())["aliases"]
    except (OSError, KeyError, ValueError):
        return {}
    return {alias: hub for hub, aliases in table.items() for alias in aliases}


def hub_id(name: str) -> str:
    return PAPER_MODELS.get(name) or _transformer_lens_aliases().get(name) or name


def is_local_folder(name: str) -> bool:
    return (Path(name) / "config.json").is_file()


def model_family(name: str) -> str:
    """The dataset family of a model name: 'gpt2' | 'pythia' | 'toy' | <local folder's own>."""
    from . import zoo

    if zoo.is_zoo_name(name):
        return "toy"
    if is_local_folder(name):
        meta = Path(name) / "universal_neurons.json"
        if meta.is_file():
            return json.loads(meta.read_text()).get("family", Path(name).resolve().name)
        cfg = json.loads((Path(name) / "config.json").read_text())
        if cfg.get("model_type") == "gpt2" and cfg.get("vocab_size") == 50257:
            return "gpt2"
        if cfg.get("model_type") == "gpt_neox" and "pythia" in name.lower():
            return "pythia"
        return Path(name).resolve().name
    hid = hub_id(name).lower()
    if "pythia" in hid:
        return "pythia"
    if "gpt2" in hid:
        return "gpt2"
    return hid.split("/")[-1]


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached_snapshot(repo: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo, local_files_only=True)
    except Exception:  # the hub client raises many types; all mean "not in the cache"
        return None


def known_hub_name(name: str) -> bool:
    """A paper alias, a TransformerLens alias or an 'org/name' hub id (not a typo of a short name)."""
    aliases = _transformer_lens_aliases()
    return name in PAPER_MODELS or name in aliases or name in set(aliases.values()) or "/" in name


def check_model_name(name: str) -> None:
    """One clear error for a name that is no zoo model, local folder or loadable hub model, before any
    stage blames a dataset for it (nothing is loaded, trained or downloaded)."""
    from . import zoo

    if zoo.is_zoo_name(name):
        zoo.get_preset(zoo.parse_zoo_name(name)[0])
        return
    if is_local_folder(name):
        return
    if Path(name).exists():
        raise UserError(f"{name!r} is a path but not a Hugging Face model folder (no config.json in it)")
    if _cached_snapshot(hub_id(name)) is not None:
        return
    if known_hub_name(name):
        would(f"download {hub_id(name)}")  # a check (login node) leaves the download to the job
        if _hub_reachable():
            return
        raise UserError(f"cannot load model {name!r}: {HUB_HOST} unreachable and {hub_id(name)!r} not in the local "
                        f"Hugging Face cache")
    if _hub_reachable():  # another short hub name: the hub answers
        return
    raise UserError(f"unknown model {name!r}: not a zoo model (toy-gpt2-a..e, toy-gpt2-tiny-a..e), a local model "
                    f"folder, a paper alias (stanford-gpt2-small-a, pythia-160m, ...) or an org/name hub id")


def _resolve_folder(name: str) -> str:
    """A local folder to load `name` from, or the hub id when the hub is reachable; else UserError."""
    from . import zoo

    if zoo.is_zoo_name(name):
        return str(zoo.ensure_model(name))
    if is_local_folder(name):
        return name
    if Path(name).exists():
        raise UserError(f"{name!r} is a path but not a Hugging Face model folder (no config.json in it)")
    repo = hub_id(name)
    cached = _cached_snapshot(repo)
    if cached is None:
        would(f"download {repo}")  # check mode never downloads
    elif is_checking():
        return cached
    if _hub_reachable():
        return repo
    if cached is not None:  # offline: a copy already in the Hugging Face cache still works
        return cached
    tried = [f"zoo name (toy-gpt2-a..e, toy-gpt2-tiny-a..e): no", f"local folder {name!r}: not found"]
    tried.append(f"hub id {repo!r}: {HUB_HOST} unreachable and not in the local Hugging Face cache")
    raise UserError(f"cannot load model {name!r}; tried " + "; ".join(tried))


def load_model(name: str, device: str = "cpu", dtype: str | None = None, compatibility_mode: bool = True):
    """Load `name` as a TransformerBridge on `device` (see module docstring)."""
    from . import runs

    if is_checking():  # a check (runs.checking) loads each model once, on the CPU
        return runs.memo(("model", name, dtype, compatibility_mode),
                         lambda: _load_model(name, "cpu", dtype, compatibility_mode))
    return _load_model(name, device, dtype, compatibility_mode)


def _load_model(name: str, device: str, dtype: str | None, compatibility_mode: bool):
    from transformer_lens.model_bridge import TransformerBridge

    from . import quiet_hf

    quiet_hf()
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    source = _resolve_folder(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # alias deprecation and folding chatter
        try:
            model = TransformerBridge.boot_transformers(source, device=str(dev), dtype=torch_dtype)
        except (OSError, ValueError, RuntimeError, KeyError) as e:  # missing, damaged or foreign weight files
            first = (str(e).splitlines() or [""])[0][:300]
            raise UserError(f"cannot load model {name!r} from {source!r} ({type(e).__name__}: {first})") from None
        except Exception as e:  # safetensors' own error type and other loader failures
            if type(e).__name__ not in ("SafetensorError", "HeaderTooLarge", "UnpicklingError"):
                raise
            raise UserError(f"cannot load model {name!r} from {source!r}: a weight file is damaged "
                            f"({type(e).__name__}: {str(e)[:200]})") from None
        if compatibility_mode:
            model.enable_compatibility_mode()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    object.__setattr__(model, "model_name", name)
    object.__setattr__(model, "family", model_family(name))
    return model


def context_length(name: str) -> int | None:
    """Positions the model reads, from its config alone (no weights loaded); None when unknown offline."""
    from . import zoo

    if zoo.is_zoo_name(name):
        return zoo.get_preset(zoo.parse_zoo_name(name)[0]).ctx_len
    folder = Path(name) if is_local_folder(name) else (Path(c) if (c := _cached_snapshot(hub_id(name))) else None)
    if folder is None or not (folder / "config.json").is_file():
        return None
    cfg = json.loads((folder / "config.json").read_text())
    return cfg.get("n_positions") or cfg.get("max_position_embeddings")


def load_tokenizer(name: str):
    """The tokenizer of a model without loading its weights (GPT-2 family works offline)."""
    from transformers import AutoTokenizer

    from . import zoo
    from .tokenizer import gpt2_tokenizer

    if zoo.is_zoo_name(name):
        return AutoTokenizer.from_pretrained(str(zoo.ensure_model(name)))
    if is_local_folder(name):
        return AutoTokenizer.from_pretrained(name)
    if model_family(name) == "gpt2" and known_hub_name(name):
        return gpt2_tokenizer()  # the exact GPT-2 BPE, no network needed
    check_model_name(name)  # 'gpt2-typo' is an error, never the GPT-2 tokenizer
    source = _resolve_folder(name)
    try:
        return AutoTokenizer.from_pretrained(source)
    except OSError as e:
        raise UserError(f"cannot load the tokenizer of {name!r}: {str(e).splitlines()[0]}") from None


# Fingerprints of weights (runs.py records them with every artifact) --------------------------------

WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


@lru_cache(maxsize=64)
def _hash_files(files: tuple[tuple[str, int, int], ...]) -> str:
    """sha1 over the content of (path, size, mtime_ns) files (size and mtime key the cache only)."""
    h = hashlib.sha1()
    for path, size, _ in files:
        h.update(f"{Path(path).name}:{size}:".encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _folder_fingerprint(folder: Path) -> str | None:
    files = sorted({p for pat in WEIGHT_FILES for p in folder.glob(pat)})
    if not files:
        return None
    return _hash_files(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


def model_fingerprint(name: str) -> str:
    """A fingerprint of a model's weights: the content hash of its weight files (zoo models and local
    folders; a hub model from the local Hugging Face cache), else 'hub:<id>' (the hub's name only)."""
    from . import zoo

    if zoo.is_zoo_name(name):
        if not zoo.is_trained(name):  # (re)trained on load: nothing recorded can match it yet
            return f"zoo-untrained:{name}"
        folder = zoo.model_dir(name)
    elif is_local_folder(name):
        folder = Path(name)
    else:
        cached = _cached_snapshot(hub_id(name))
        if cached is None:  # not cached: the name is all we know before loading
            return f"hub:{hub_id(name)}"
        folder = Path(cached)
    return _folder_fingerprint(folder) or f"folder:{folder.resolve().name}"
