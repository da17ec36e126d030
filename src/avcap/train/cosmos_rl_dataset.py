"""avcap's curated training set through cosmos-rl's custom-dataset API.

For users who have cosmos-rl (`pip install 'avcap[cosmos-rl]'`, plus redis-server and, in
practice, flash-attn), the recipe's own launch line works on avcap's curated data:

    cosmos-rl --config recipe.toml $(python -m avcap.train.cosmos_rl_dataset --print-path)

The script follows cosmos-rl's documented custom-dataset contract (cosmos-rl v0.3.9–0.4.x,
`cosmos_rl/launcher/worker_entry.py`, and the nvidia-cosmos/cosmos-reason2 `examples/cosmos_rl`
scripts):

- cosmos-rl runs this file as a script in every role (controller, policy replicas under torchrun)
  with `--config <a copy of the TOML>` among its arguments (`COSMOS_ROLE` set in the environment);
  the script reads the free-form `[custom]` table itself — here `[custom.dataset]` (dataset_root,
  subdirectories, weights, meta_file) and `[custom.vision]`, validated with avcap's schema — and
  calls `cosmos_rl.launcher.worker_entry.main(dataset=..., sampler=..., data_packer=...,
  val_data_packer=...)`;
- `dataset` is a `torch.utils.data.Dataset` whose `__getitem__` returns one conversation list
  (system turn, user turn with the video item first then the prompt, assistant turn with the
  target — avcap.data.sources), video paths absolute, the video item's sampling keys taken from
  `[custom.vision]` (so changing nframes/fps/pixels needs no re-curation). It also has
  `setup(config)`, the hook cosmos-rl calls (`cosmos_rl.utils.util.call_setup`) when it is given a
  dataset factory; the config's `custom` dict is read there;
- `sampler` is a factory with cosmos-rl's call signature `sampler(dataset, num_replicas=,
  rank=, shuffle=, drop_last=)` returning avcap's blend sampler (avcap.data.blend), so the
  `weights` of `[custom.dataset]` shape the batches exactly as in `avcap train`;
- `data_packer` / `val_data_packer` are a factory cosmos-rl calls with its `Config`
  (`cosmos_rl/comm/base.py`): for Qwen3-VL dense (`model_type` "qwen3_vl": Cosmos-Reason2-2B/8B)
  it returns cosmos-rl's `HFVLMDataPacker`, the packer of the Hugging Face model path that
  cosmos-rl trains dense Qwen3-VL with (it reads videos through qwen-vl-utils for "qwen3_vl"). cosmos-rl
  registers no default packer for "qwen3_vl" (its `Qwen3_VL_DataPacker` is registered for
  "qwen3_vl_moe", whose own model takes the position ids that packer adds) and would fall back to the
  same class with a warning; naming it here makes the choice explicit, and any other model type is
  refused with one line rather than trained with a packer nobody checked.

cosmos-rl copies the TOML to a temporary file before handing it to the script, so a relative
`dataset_root` is looked up next to that file first, then in the directory cosmos-rl was started
from (its working directory): start it from the directory of your TOML, or use an absolute path.
Nothing here imports cosmos-rl until `main` runs; avcap does not depend on it.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a file by cosmos-rl: keep avcap's own modules off the top level
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]

import argparse
from typing import Any, Callable, Mapping, Optional, Sequence

import torch.utils.data

from avcap.core.config import Custom, tomllib
from avcap.data.blend import BlendPlan, BlendSampler
from avcap.data.sources import CurateError, load_conversation
from avcap.train.data import index_sources

# Heavy libraries (cosmos_rl, pydantic, transformers) are imported inside the functions that use them: `avcap --help` and
# the CLI import every verb's module (0.6 s; importing torch, transformers, av, pandas and
# matplotlib adds ~3 s on the 2-core box).


class CosmosRLDatasetError(ValueError):
    pass


def _resolve_root(root: str, base_dirs: Sequence[Path]) -> Path:
    p = Path(root).expanduser()
    if p.is_absolute():
        return p
    tried = []
    for base in base_dirs:
        cand = (base / p).resolve()
        if cand.is_dir():
            return cand
        tried.append(str(cand))
    raise CosmosRLDatasetError(f"[custom.dataset] dataset_root {root!r} not found (tried {', '.join(tried)}); "
                               "run `avcap curate` or give an absolute path")


class AvcapConversations(torch.utils.data.Dataset):
    """The curated conversations of `[custom.dataset]`, sources concatenated in `subdirectories`
    order; item i is a cosmos-rl conversation list."""

    def __init__(self, custom: Optional[Mapping[str, Any]] = None, *, base_dirs: Sequence[str | Path] = ()):
        self.base_dirs = [Path(b) for b in base_dirs] or [Path.cwd()]
        self.custom: Optional[Custom] = None
        self.files: list[Path] = []
        self.sizes: list[int] = []
        if custom is not None:
            self._build(custom)

    def setup(self, config, *args, **kwargs) -> None:
        """cosmos-rl's hook: `config` is its `Config`; `config.custom` holds the TOML's [custom] table."""
        if self.custom is None:
            self._build(getattr(config, "custom", None) or {})

    def _build(self, custom: Mapping[str, Any]) -> None:
        from pydantic import ValidationError

        try:
            self.custom = Custom.model_validate(dict(custom))
        except ValidationError as exc:
            raise CosmosRLDatasetError(f"[custom]: {exc}") from None
        ds = self.custom.dataset
        root = _resolve_root(ds.dataset_root, self.base_dirs)
        try:
            index = index_sources(root, ds.subdirectories, ds.meta_file)
        except CurateError as exc:
            raise CosmosRLDatasetError(str(exc)) from None
        self.files, self.sizes = index.files, index.sizes

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx: int) -> list[dict[str, Any]]:
        assert self.custom is not None, "call setup(config) first"
        return load_conversation(self.files[idx], vision=self.custom.vision)


def blend_sampler_factory(dataset: AvcapConversations, *, train_batch_per_replica: int, seed: int) -> Callable:
    """A sampler factory with cosmos-rl's signature (see module doc)."""

    def make(train_dataset=None, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, drop_last: bool = False):
        assert dataset.custom is not None
        plan = BlendPlan(tuple(dataset.sizes), tuple(dataset.custom.dataset.normalized_weights()), seed,
                         train_batch_per_replica * num_replicas, names=tuple(dataset.custom.dataset.subdirectories))
        return BlendSampler(plan, num_replicas=num_replicas, rank=rank)

    return make


def data_packer(config) -> Any:
    """cosmos-rl's data packer for the policy model (see module doc); `config` is cosmos-rl's `Config`."""
    from cosmos_rl.dispatcher.data.packer.hf_vlm_data_packer import HFVLMDataPacker
    from transformers import AutoConfig

    name = config.policy.model_name_or_path
    model_type = AutoConfig.from_pretrained(name, trust_remote_code=True).model_type
    if model_type != "qwen3_vl":
        raise CosmosRLDatasetError(f"[policy] model_name_or_path {name!r}: model_type {model_type!r}; "
                                   "avcap's cosmos-rl script feeds Qwen3-VL dense models (model_type 'qwen3_vl')")
    return HFVLMDataPacker()


def from_config_file(path: str | Path) -> tuple[AvcapConversations, Callable]:
    """Dataset and sampler factory from a cosmos-rl TOML (its [custom], [train] tables)."""

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CosmosRLDatasetError(f"{path}: {exc}") from None
    dataset = AvcapConversations(data.get("custom") or {}, base_dirs=[path.resolve().parent, Path.cwd()])
    train = data.get("train") or {}
    sampler = blend_sampler_factory(dataset, train_batch_per_replica=int(train.get("train_batch_per_replica", 8)),
                                    seed=int(train.get("seed", 42)))
    return dataset, sampler


def script_path() -> str:
    return str(Path(__file__).resolve())


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="avcap's curated data for `cosmos-rl --config FILE <this file>`")
    parser.add_argument("--config", help="the recipe TOML (cosmos-rl passes it)")
    parser.add_argument("--print-path", action="store_true", help="print this script's path (for the cosmos-rl command line)")
    args, _ = parser.parse_known_args(argv)
    if args.print_path:
        print(script_path())
        return
    if not args.config:
        parser.error("--config FILE is required")
    try:
        dataset, sampler = from_config_file(args.config)
    except CosmosRLDatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if len(dataset) == 0:
        print(f"error: {args.config}: [custom.dataset] holds no curated samples", file=sys.stderr)
        raise SystemExit(2)
    dataset[0]  # fail early on an unreadable dataset, as cosmos-reason2's examples do
    try:
        from cosmos_rl.launcher.worker_entry import main as launch
    except ImportError:
        print("error: cosmos-rl is not installed (pip install 'avcap[cosmos-rl]'); "
              "or train without it: avcap train --config FILE", file=sys.stderr)
        raise SystemExit(2) from None
    launch(dataset=dataset, sampler=sampler, data_packer=data_packer, val_data_packer=data_packer)


if __name__ == "__main__":
    main()
