"""How `avcap train` feeds the model: the DataLoader wait in train_log.jsonl (`data_wait_s`); a step
that reads the device once (losses and gradient norm equal a plain forward and backward; the
micro-batch loss reads nothing back from the device); `[avcap.train] decoder` (validated, recorded,
free to change on resume, NVDEC refused without CUDA, NVDEC's spawned DataLoader workers)."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from test_train import log_of, train_config

from avcap.core.config import load_config


@pytest.fixture(scope="module")
def fed(curated, tiny_model_dir):
    """2 steps of global batch 2 in micro-batches of 1 (2 per step), one DataLoader worker process,
    a checkpoint after each step."""
    from avcap.train.loop import train

    path = train_config(curated, tiny_model_dir, "fed", per_rank=2, workers=1)
    cfg = load_config(path, overrides={"train": {"max_num_steps": 2, "ckpt": {"save_freq": 1}}})
    lines: list[str] = []
    train(cfg, echo=lines.append)
    return cfg, cfg.resolve(cfg.train.output_dir), lines


def test_every_step_records_its_wait_for_the_dataloader(fed):
    _, out, lines = fed
    log = log_of(out)
    assert sorted(log) == [1, 2]
    for rec in log.values():
        wait = rec["data_wait_s"]
        assert isinstance(wait, float) and 0 <= wait <= rec["step_time_s"]
    # step 1 waits for the worker process to start and encode its first micro-batches
    assert log[1]["data_wait_s"] > 0
    assert any(line.startswith("step 2/2 ") and " data_wait " in line for line in lines)


# ----------------------------------------------------------------------------- no waits for the device


def _micro_batches_of_step(cfg, step: int, processor) -> list[dict]:
    """The micro-batches `avcap train` feeds for step `step` (0-based), built again here."""
    from avcap.data.blend import BlendPlan
    from avcap.train.data import Collator, SFTDataset, StepBatches, index_sources

    ds = cfg.custom.dataset
    index = index_sources(cfg.resolve(ds.dataset_root), ds.subdirectories, ds.meta_file, skip_bad=True)
    plan = BlendPlan(tuple(index.sizes), tuple(ds.normalized_weights()), cfg.train.seed,
                     cfg.train.train_batch_per_replica, names=tuple(index.names))
    dataset = SFTDataset(index, processor, vision=cfg.custom.vision, model_max_length=cfg.policy.model_max_length)
    sampler = StepBatches(plan, rank=0, world_size=1, mini_batch=cfg.train.train_policy.mini_batch,
                          start_step=step, end_step=step + 1)
    collate = Collator(processor.tokenizer.pad_token_id)
    return [collate([dataset[i] for i in idx]) for idx in sampler]


def test_logged_loss_and_grad_norm_equal_a_plain_forward_and_backward(fed, tiny_model_dir):
    """Each logged step equals a plain full-logits forward (attention mask included) and backward over
    the same micro-batches, from the weights the step started from (the model, then checkpoint step_1)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cfg, out, _ = fed
    log = log_of(out)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    keys = ("input_ids", "attention_mask", "pixel_values_videos", "video_grid_thw", "mm_token_type_ids")
    for step, weights in ((1, tiny_model_dir), (2, out / "checkpoints/step_1")):
        model = AutoModelForImageTextToText.from_pretrained(weights)
        micro = _micro_batches_of_step(cfg, step - 1, processor)
        assert len(micro) == 2 and sorted(i for mb in micro for i in mb["indices"]) == sorted(log[step]["batch"])
        n_tokens = sum(int((mb["labels"][:, 1:] != -100).sum()) for mb in micro)
        losses = []
        for mb in micro:
            logits = model(**{k: mb[k] for k in keys if k in mb}, use_cache=False).logits[:, :-1].float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), mb["labels"][:, 1:].reshape(-1),
                                   ignore_index=-100, reduction="sum")
            (loss / n_tokens).backward()
            losses.append(float(loss.detach()))
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")))
        assert log[step]["assistant_tokens"] == n_tokens
        assert log[step]["loss"] == pytest.approx(sum(losses) / n_tokens, rel=1e-6)
        assert log[step]["grad_norm"] == pytest.approx(norm, rel=1e-4)


class _Lm(torch.nn.Module):
    """A language model small enough to live on the meta device (no storage: any read of a value raises)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.embed, self.head = torch.nn.Embedding(vocab, 8), torch.nn.Linear(8, vocab)

    def forward(self, input_ids, attention_mask=None, logits_to_keep=None, use_cache=False):
        h = self.embed(input_ids)
        if logits_to_keep is not None:
            h = h[:, logits_to_keep]
        return types.SimpleNamespace(logits=self.head(h))


@pytest.mark.parametrize("per_sample", [False, True])
def test_micro_batch_loss_reads_nothing_back_from_the_device(per_sample):
    """`micro_batch_loss` on the meta device, where reading a tensor's value raises: the count it returns
    comes from the labels on the host, and no mask indexes a device tensor (that would wait for the GPU
    between a micro-batch's forward and backward); on the CPU the same call gives the reference values."""
    from avcap.train.data import Collator
    from avcap.train.loop import micro_batch_loss

    torch.manual_seed(0)
    rows = [([5, 6, 7, 8, 9], [-100, -100, 7, 8, 9]), ([3, 4, 5], [-100, -100, -100]), ([1, 2, 3, 4], [-100, -100, 3, 4])]
    samples = [{"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
                "labels": torch.tensor([lab]), "index": i} for i, (ids, lab) in enumerate(rows)]
    batch = Collator(0)(samples)
    model = _Lm(16)
    cpu_loss, cpu_n = micro_batch_loss(model, batch, torch.device("cpu"), slice_logits=True, per_sample=per_sample)
    meta_loss, meta_n = micro_batch_loss(copy.deepcopy(model).to("meta"), batch, torch.device("meta"),
                                         slice_logits=True, per_sample=per_sample)
    assert meta_loss.device.type == "meta" and meta_loss.dim() == 0 and meta_n == cpu_n
    assert isinstance(cpu_n, int) and cpu_n == (2 if per_sample else 5)  # the middle row has no label
    # the reference: each row alone, the token cross-entropies of its labelled next tokens
    tok = []
    for ids, lab in rows:
        logits = model(torch.tensor([ids])).logits[0, :-1]
        target = torch.tensor(lab[1:])
        tok.append(torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="none")[target != -100])
    if per_sample:
        expect = sum(float(t.mean().detach()) for t in tok if len(t))
    else:
        expect = float(torch.cat(tok).sum().detach())
    assert float(cpu_loss.detach()) == pytest.approx(expect, rel=1e-5)


# ----------------------------------------------------------------------------- [avcap.train] decoder


def test_decoder_key_takes_cpu_or_nvdec_and_names_itself_otherwise(tmp_path):
    from typer.testing import CliRunner

    from avcap.cli import app
    from avcap.core.config import ConfigError

    assert load_config().avcap.train.decoder == "cpu"
    good = tmp_path / "nvdec.toml"
    good.write_text('[avcap.train]\ndecoder = "nvdec"\n')
    assert load_config(good).avcap.train.decoder == "nvdec"
    bad = tmp_path / "bad.toml"
    bad.write_text('[avcap.train]\ndecoder = "gpu"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    (line,) = exc.value.problems
    assert line.startswith(f"{bad}: avcap.train.decoder: ") and "'cpu' or 'nvdec'" in line and "'gpu'" in line
    res = CliRunner().invoke(app, ["train", "--config", str(bad)])
    assert res.exit_code == 2 and "avcap.train.decoder" in res.output and "Traceback" not in res.output


def test_the_decoder_is_recorded_in_the_log_and_the_checkpoint(fed):
    import json

    cfg, out, lines = fed
    assert cfg.avcap.train.decoder == "cpu"
    assert all(rec["decoder"] == "cpu" for rec in log_of(out).values())
    for step in (1, 2):
        assert json.loads((out / f"checkpoints/step_{step}/avcap_train_state.json").read_text())["decoder"] == "cpu"
    assert any(line.startswith("training ") and "videos decoded by the CPU ([avcap.train] decoder) in 1 DataLoader "
               "worker processes" in line for line in lines)


def test_a_resume_may_change_the_decoder(fed, tmp_path):
    """The decoder does not change the data: a checkpoint written by an NVDEC run resumes with the CPU's."""
    import json
    import shutil

    from avcap.train.loop import train

    cfg, out, _ = fed
    run = tmp_path / "run"
    shutil.copytree(out, run)
    shutil.rmtree(run / "checkpoints/step_2")
    state_file = run / "checkpoints/step_1/avcap_train_state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "decoder": "nvdec"}))
    resumed = load_config(cfg.source, overrides={"train": {"max_num_steps": 2, "output_dir": str(run),
                                                           "ckpt": {"save_freq": 1}}})
    lines: list[str] = []
    train(resumed, echo=lines.append)
    assert any(line.startswith("resuming from") and "step 1/2" in line for line in lines)
    before, after = log_of(out), log_of(run)
    assert after[2]["decoder"] == "cpu" and after[2]["batch"] == before[2]["batch"]
    assert after[2]["loss"] == pytest.approx(before[2]["loss"], rel=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the run without a CUDA device")
def test_nvdec_without_a_cuda_device_stops_at_start_with_one_line(curated, tiny_model_dir):
    from typer.testing import CliRunner

    from avcap.cli import app

    path = train_config(curated, tiny_model_dir, "nvdec-on-cpu")
    path.write_text(path.read_text() + '\n[avcap.train]\ndecoder = "nvdec"\n')
    res = CliRunner().invoke(app, ["train", "--config", str(path)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert errors == [('error: [avcap.train] decoder = "nvdec" decodes the videos on the GPU, and this run is on cpu '
                       '(torch sees no CUDA device); set decoder = "cpu"')]
    assert not load_config(path).resolve("runs/nvdec-on-cpu").exists()  # stopped before the output directory


def test_loader_options_spawn_nvdec_workers_on_the_ranks_gpu():
    from avcap.train.loop import _worker_init, loader_options

    cpu, gpu = torch.device("cpu"), torch.device("cuda:3")
    plain = loader_options(4, None, cpu, "cpu")
    assert plain["num_workers"] == 4 and plain["prefetch_factor"] == 2 and plain["pin_memory"] is False
    assert "multiprocessing_context" not in plain  # the platform's default (fork on Linux)
    assert plain["worker_init_fn"].func is _worker_init and plain["worker_init_fn"].args[1] is None
    cuda_cpu = loader_options(4, 3, gpu, "cpu")
    assert cuda_cpu["pin_memory"] is True and cuda_cpu["prefetch_factor"] == 3
    assert "multiprocessing_context" not in cuda_cpu and cuda_cpu["worker_init_fn"].args[1] is None
    nvdec = loader_options(4, None, gpu, "nvdec")
    assert nvdec["multiprocessing_context"] == "spawn" and nvdec["pin_memory"] is True
    assert nvdec["worker_init_fn"].args[1] == 3  # decode on this rank's GPU
    inline = loader_options(0, 5, gpu, "nvdec")  # no workers: decoded in the training process
    assert inline == {"num_workers": 0, "pin_memory": True, "prefetch_factor": None}


def test_spawned_workers_get_everything_and_give_the_same_batches(fed, tiny_model_dir):
    """NVDEC's worker set-up (spawn: the dataset, processor, collator and set-up function are pickled
    into fresh processes) with the CPU decoder: the batches equal those loaded in this process."""
    from torch.utils.data import DataLoader
    from transformers import AutoProcessor

    from avcap.train.data import Collator, SFTDataset, index_sources
    from avcap.train.loop import loader_options

    cfg, _, _ = fed
    ds = cfg.custom.dataset
    index = index_sources(cfg.resolve(ds.dataset_root), ds.subdirectories, ds.meta_file, skip_bad=True)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    dataset = SFTDataset(index, processor, vision=cfg.custom.vision, model_max_length=4096)
    batches = [[0, 2], [1, 3]]

    def load(**opts):
        return list(DataLoader(dataset, batch_sampler=batches, collate_fn=Collator(processor.tokenizer.pad_token_id),
                               **opts))

    spawned = load(**loader_options(1, None, torch.device("cpu"), "nvdec"))
    inline = load(num_workers=0)
    assert len(spawned) == len(inline) == 2
    for a, b in zip(spawned, inline):
        assert a.keys() == b.keys() and a["indices"] == b["indices"] and not a["skipped"]
        for k, v in b.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(a[k], v), k
