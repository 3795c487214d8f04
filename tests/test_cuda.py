"""The CUDA paths, on a machine with a GPU (skipped elsewhere): training in fp32 / tf32 / bf16 / fp16 (GradScaler)
and with torch.compile (and CUDA graphs on length buckets) gives the CPU's losses within each precision's tolerance,
and decoding on the GPU gives the CPU's tokens."""

import json
from pathlib import Path

import pytest
import torch
from test_trainer import TINY, aiayn

from aiayn.config import ModelConfig
from aiayn.decoding import beam_search, greedy_search
from aiayn.model import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# No dropout: the CPU and the GPU draw different random masks, and the comparison is about the arithmetic.
NO_DROPOUT = ["--model.dropout", "0", "--train.eval_every", "100"]


def losses(out: Path, *extra: str) -> list[float]:
    result = aiayn("train", *TINY, *NO_DROPOUT, "--train.out_dir", out, *extra)
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [e["loss"] for e in entries if "loss" in e and e.get("split", "train") == "train"]


@pytest.fixture(scope="module")
def cpu_losses(tmp_path_factory):
    return losses(tmp_path_factory.mktemp("cpu"), "--train.device", "cpu")


@pytest.mark.parametrize(
    "extra,rtol",
    [
        ((), 1e-4),  # fp32: the same arithmetic up to summation order
        (("--train.matmul_precision", "tf32"), 1e-2),
        (("--train.precision", "bf16"), 3e-2),
        (("--train.precision", "fp16"), 1e-2),  # with the GradScaler
        (("--train.compile", "true"), 1e-4),
    ],
    ids=["fp32", "tf32", "bf16", "fp16", "compile"],
)
def test_training_on_cuda_gives_the_cpu_losses(tmp_path, cpu_losses, extra, rtol):
    gpu = losses(tmp_path / "gpu", "--train.device", "cuda", *extra)
    assert len(gpu) == len(cpu_losses) == 12
    torch.testing.assert_close(torch.tensor(gpu), torch.tensor(cpu_losses), rtol=rtol, atol=0)


def test_decoding_on_cuda_gives_the_cpu_tokens():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, d_model=64, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=128)
    model = build_model(config).eval()
    src = torch.randint(4, 64, (5, 9))
    src[1, 6:] = config.pad_id  # one padded source
    cpu_greedy = greedy_search(model, src, max_len=12)
    cpu_beam = beam_search(model, src, beam_size=4, alpha=0.6, max_len=12, n_best=2)
    model.cuda()
    gpu_greedy = greedy_search(model, src.cuda(), max_len=12)
    gpu_beam = beam_search(model, src.cuda(), beam_size=4, alpha=0.6, max_len=12, n_best=2)
    assert [h.tokens for h in gpu_greedy] == [h.tokens for h in cpu_greedy]
    assert [[h.tokens for h in n] for n in gpu_beam] == [[h.tokens for h in n] for n in cpu_beam]
    for n_gpu, n_cpu in zip(gpu_beam, cpu_beam, strict=True):
        for g, c in zip(n_gpu, n_cpu, strict=True):
            assert g.score == pytest.approx(c.score, rel=1e-4)


def test_cuda_graphs_with_length_buckets_give_the_cpu_losses(tmp_path):
    """train.cuda_graphs (torch.compile mode "reduce-overhead") on the fixed shapes of train.length_bucket: the
    eager CPU run's losses with the same batches."""
    buckets = ("--train.length_bucket", "16")
    cpu = losses(tmp_path / "cpu", "--train.device", "cpu", *buckets)
    gpu = losses(tmp_path / "gpu", "--train.device", "cuda", *buckets, "--train.compile", "true",
                 "--train.cuda_graphs", "true")  # fmt: skip
    assert len(gpu) == len(cpu) == 12
    torch.testing.assert_close(torch.tensor(gpu), torch.tensor(cpu), rtol=1e-4, atol=0)
