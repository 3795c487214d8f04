"""The core's contracts: the registry and task kinds, DecodeConfig, the special ids, the error family, the kernel
choice handed to a model, typed trainer state, and a Trainer that starts nothing and restores what it changes."""

import signal
import warnings

import pytest
import torch

import aiayn
from aiayn.config import DECODE_DEFAULTS, ConfigNote, DecodeConfig, ModelConfig, RunConfig, SpecialIds, TaskKind
from aiayn.decoding import Cancelled, beam_search, greedy_search, sample, search
from aiayn.errors import ConfigError, DataError, ModelFolderError, RequestError, UserError
from aiayn.model import (
    FAMILIES,
    SDPA,
    CausalLM,
    Kernels,
    LanguageModel,
    RNNSeq2Seq,
    Seq2SeqModel,
    Transformer,
    build,
    build_model,
    kernels_of,
    task_kind,
    use_kernels,
)
from aiayn.train.state import TrainState

TINY = dict(d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=32, max_len=32)


def tiny(arch="seq2seq", vocab_size=12, seed=0, **overrides):
    torch.manual_seed(seed)
    return build(ModelConfig(arch=arch, vocab_size=vocab_size, **{**TINY, **overrides})).eval()


def test_the_registry_builds_each_family_and_names_its_task_kind():
    assert {"seq2seq": Transformer, "lm": LanguageModel, "rnn": RNNSeq2Seq} == FAMILIES
    assert build_model is build
    s2s, lm = tiny(), tiny("lm")
    assert type(s2s) is Transformer and type(lm) is LanguageModel
    assert (task_kind(s2s.config), task_kind(lm.config)) == (TaskKind.PAIRS, TaskKind.TEXT)
    assert isinstance(s2s, Seq2SeqModel) and isinstance(lm, CausalLM)
    # The protocol's pre-softmax Linear is the tied embedding (paper §3.4), and the hook lists every attention.
    assert s2s.output_weight is s2s.src_embed.token.weight and s2s.output_bias is None
    kinds = [kind for _, kind, _ in s2s.sublayers()]
    assert kinds.count("attention") == 3 and kinds.count("embedding") == 2 and kinds.count("ffn") == 2
    with pytest.raises(ConfigError, match="Transformer needs ModelConfig.arch='seq2seq', got 'lm'"):
        Transformer(lm.config)


def test_decode_config_has_the_papers_defaults_once_and_validates_itself():
    d = DecodeConfig()
    assert (d.beam_size, d.alpha, d.max_len, d.n_best, d.batch_tokens) == (4, 0.6, None, 1, 4096)
    assert d == DECODE_DEFAULTS and not d.greedy and DecodeConfig(beam_size=1).greedy
    assert DecodeConfig.of(beam=2, alpha=0.0) == DecodeConfig(beam_size=2, alpha=0.0)  # `beam` is beam_size
    assert d.replace(beam=1).greedy
    with pytest.raises(RequestError, match=r"top_p=1.5 must be in \(0, 1\]"):
        DecodeConfig(top_p=1.5)
    with pytest.raises(RequestError, match="n_best=3 must be an integer between 1 and beam_size \\(2\\)"):
        DecodeConfig(beam_size=2, n_best=3)
    with pytest.raises(RequestError, match="beam_size=True must be an integer >= 1"):
        DecodeConfig(beam_size=True)
    with pytest.raises(RequestError, match="not both"):
        DecodeConfig.of(beam=2, beam_size=2)
    with pytest.raises(AttributeError):
        d.beam_size = 2  # frozen


def test_every_user_error_is_a_value_error_of_one_family():
    for kind in (ConfigError, DataError, ModelFolderError, RequestError):
        assert issubclass(kind, UserError) and issubclass(kind, ValueError)
    assert aiayn.UserError is UserError
    from aiayn.data.reader import DataError as ReaderDataError
    from aiayn.train.checkpoint import CheckpointError

    assert ReaderDataError is DataError and issubclass(CheckpointError, ModelFolderError)


def test_special_ids_live_in_the_config_and_are_checked():
    c = ModelConfig(vocab_size=100, pad_id=7, bos_id=7, eos_id=0, unk_id=3)
    assert c.special_ids == SpecialIds(pad=7, bos=7, eos=0, unk=3)
    assert c.special_ids.never_emit == (7,)  # Marian: decoding starts from the pad token and never emits it
    assert ModelConfig(vocab_size=10).special_ids.never_emit == (0, 1)
    with pytest.raises(ConfigError, match="eos_id=5 equals pad_id"):
        ModelConfig(vocab_size=10, pad_id=5, eos_id=5)
    with pytest.raises(ConfigError, match=r"bos_id=12 must be in \[0, vocab_size=10\)"):
        ModelConfig(vocab_size=10, bos_id=12)


def test_old_data_max_tokens_key_still_works_with_a_note():
    with pytest.warns(ConfigNote, match="data.max_tokens is now called data.max_example_tokens"):
        config = RunConfig.from_dict({"data": {"max_tokens": 64}, "train": {"max_tokens": 1000}})
    assert config.data.max_example_tokens == 64 and config.train.max_tokens == 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new key: no note
        assert RunConfig.from_dict({"data": {"max_example_tokens": 64}}).data.max_example_tokens == 64
    with pytest.raises(ConfigError, match="give only data.max_example_tokens"):
        RunConfig.from_dict({"data": {"max_tokens": 64, "max_example_tokens": 64}})


def test_decoding_never_emits_padding_or_the_start_token():
    model = tiny(seed=3)
    with torch.no_grad():  # make padding (0) and BOS (1) the most probable tokens everywhere
        model.output.weight[:2] *= 0
        model.output.weight[:2] += 5 * model.output.weight[2:].abs().max()
    src = torch.tensor([[4, 5, 6, 2]])
    for hyps in ([greedy_search(model, src, max_len=6)], beam_search(model, src, beam_size=3, max_len=6, n_best=3)):
        for h in hyps[0]:
            assert h.tokens and not {0, 1} & set(h.tokens)


def test_search_is_greedy_for_one_beam_and_cancels_when_asked():
    model = tiny(seed=4)
    src = torch.tensor([[4, 5, 6, 2], [7, 8, 2, 0]])
    greedy = greedy_search(model, src, max_len=5)
    assert [[h.tokens for h in n] for n in search(model, src, DecodeConfig(beam_size=1, max_len=5))] == [
        [h.tokens] for h in greedy
    ]
    beam = beam_search(model, src, beam_size=3, alpha=0.6, max_len=5)
    assert [[h.tokens for h in n] for n in search(model, src, DecodeConfig(beam_size=3, max_len=5))] == [
        [h.tokens for h in n] for n in beam
    ]
    calls = []

    def stop_at_third():
        calls.append(1)
        return len(calls) == 3

    with pytest.raises(Cancelled):
        greedy_search(model, src, max_len=8, min_len=8, should_stop=stop_at_third)
    assert len(calls) == 3  # checked once per step
    calls.clear()
    with pytest.raises(Cancelled):
        sample(tiny("lm"), torch.tensor([[4, 5]]), 8, should_stop=stop_at_third)


def test_kernels_are_handed_to_the_model_and_change_no_value():
    model = tiny(seed=5, dropout=0.0)
    assert kernels_of(model) == SDPA
    src, tgt = torch.tensor([[4, 5, 6, 2]]), torch.tensor([[1, 7, 8]])
    plain = model(src, tgt)
    use_kernels(model, Kernels(matmul_attention=True, cpu_dropout=True))
    assert kernels_of(model).matmul_attention
    assert all(m.kernels.matmul_attention for m in model.modules() if hasattr(m, "kernels"))
    torch.testing.assert_close(model(src, tgt), plain, atol=1e-5, rtol=1e-5)
    from aiayn.train.precision import kernels_for

    cpu = torch.device("cpu")
    assert kernels_for(cpu, "bf16", "fp32") == Kernels(short_fp32=True, cpu_dropout=True)
    assert kernels_for(cpu, "fp32", "bf16") == Kernels(matmul_attention=True, cpu_dropout=True)
    assert kernels_for(torch.device("meta"), "bf16", "bf16") == SDPA  # GPUs: PyTorch's own kernels


def test_train_state_reads_checkpoints_written_before_it():
    old = {"step": 7, "batches_done": 14, "tokens": 99, "interval": [1.5, 1.25, 3], "best": 2.0, "best_step": 6,
           "bad_evals": 1, "seconds": 4.5}  # fmt: skip
    state = TrainState.from_dict(old)
    assert (state.step, state.interval.loss, state.interval.nll, state.interval.tokens) == (7, 1.5, 1.25, 3)
    assert TrainState.from_dict(state.to_dict()) == state
    assert state.improved(1.9, higher_is_better=False) and not state.improved(1.9, higher_is_better=True)


def test_a_trainer_starts_nothing_changes_no_user_config_and_restores_process_settings(tmp_path):
    from aiayn.train.trainer import Trainer

    data = {
        "data": {"task": "copy", "task_train_size": 50, "task_valid_size": 5},
        "tokenizer": {"vocab_size": 60},
        "model": {"d_model": 16, "n_heads": 2, "n_encoder_layers": 1, "n_decoder_layers": 1, "d_ff": 32},
        "train": {"out_dir": str(tmp_path / "run"), "max_steps": 2, "max_tokens": 128, "eval_every": 2,
                  "eval_bleu_sentences": 0, "threads": 1},
    }  # fmt: skip
    config = RunConfig.from_dict(data)
    before = config.to_dict()
    threads, handler = torch.get_num_threads(), signal.getsignal(signal.SIGTERM)
    trainer = Trainer(config, log=lambda _: None)
    assert not (tmp_path / "run").exists() and not torch.distributed.is_initialized()
    assert trainer.run() == 0
    assert config.to_dict() == before  # the run completed its own resolved copy (vocab size, ...)
    assert trainer.config.model.vocab_size != before["model"]["vocab_size"]
    assert (torch.get_num_threads(), signal.getsignal(signal.SIGTERM)) == (threads, handler)
    assert trainer.state.step == 2


def test_plain_text_with_an_encoder_decoder_is_one_line_of_error(tmp_path):
    from aiayn.train.trainer import Trainer

    text = tmp_path / "text.txt"
    text.write_text("hello world\n" * 50)
    config = RunConfig.from_dict({"data": {"train_text": str(text)}, "tokenizer": {"kind": "char"},
                                  "train": {"out_dir": str(tmp_path / "run")}})  # fmt: skip
    with pytest.raises(ConfigError, match="data.train_text is plain text, .* set model.arch: lm"):
        Trainer(config, log=lambda _: None).run()


def test_model_special_ids_that_differ_from_the_tokenizers_are_one_line(tmp_path):
    from aiayn.train.trainer import Trainer

    config = RunConfig.from_dict({"data": {"task": "copy", "task_train_size": 50, "task_valid_size": 5},
                                  "tokenizer": {"vocab_size": 60}, "model": {"pad_id": 3, "unk_id": 0},
                                  "train": {"out_dir": str(tmp_path / "run")}})  # fmt: skip
    expected = "model.pad_id/bos_id/eos_id/unk_id = 3/1/2/0, but the tokenizer's are 0/1/2/3"
    with pytest.raises(ConfigError, match=expected):
        Trainer(config, log=lambda _: None).run()


def test_the_cli_prints_a_renamed_key_as_one_note_line():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "aiayn", "train", "--data.max_tokens", "2"], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        "note: data.max_tokens is now called data.max_example_tokens; the old name still works",
        "error: DataConfig.max_example_tokens=2 must be >= 3 (BOS, one token, EOS)",
    ]
