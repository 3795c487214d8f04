"""`aiayn info` and what it rests on (aiayn.machine): the CPU read from /proc/cpuinfo, the measured GEMM path, the
precision `train.precision: auto` picks, and that a run records its choice so a resume keeps it."""

import json

import pytest
import torch
import yaml
from tiny_run import TINY, final_weights

from aiayn import cli, machine
from aiayn.config import RunConfig, parse_overrides
from aiayn.errors import ConfigError
from aiayn.train import precision
from aiayn.train.trainer import Trainer

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512bw avx512_bf16 avx512_vnni

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu
"""
SAPPHIRE = """processor : 0
vendor_id : GenuineIntel
model name : Intel(R) Xeon(R) Platinum 8488C
flags : avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_vnni
"""
GRAVITON = """processor : 0
BogoMIPS : 243.75
Features : fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid bf16
CPU implementer : 0x41
"""


def test_cpuinfo_of_an_amd_epyc_intel_xeon_and_arm_core():
    amd = machine.parse_cpuinfo(EPYC, cores=2)
    assert (amd.model, amd.vendor, amd.cores, amd.bf16_hardware) == ("AMD EPYC 9R14", "AMD", 2, "AVX512-BF16")
    assert amd.flags == {"avx2": True, "avx512f": True, "avx512_vnni": True, "avx512_bf16": True, "amx_tile": False,
                         "amx_bf16": False, "amx_int8": False}  # fmt: skip  (the first processor's flags only)
    intel = machine.parse_cpuinfo(SAPPHIRE, cores=8)
    assert (intel.vendor, intel.bf16_hardware, intel.flags["amx_tile"]) == ("Intel", "AMX", True)
    arm = machine.parse_cpuinfo(GRAVITON, cores=4)
    assert (arm.vendor, arm.bf16_hardware, arm.flags["avx2"]) == ("ARM", "none", False)


@pytest.mark.parametrize(("hardware", "expected"), [(EPYC, "bf16"), (SAPPHIRE, "bf16"), (GRAVITON, "fp32")])
def test_recommended_precision_follows_the_bf16_hardware(monkeypatch, hardware, expected):
    monkeypatch.setattr(machine, "cpu_info", lambda: machine.parse_cpuinfo(hardware, cores=2))
    assert machine.recommended_precision("cpu") == expected


@pytest.fixture
def fresh_gemm_choice():
    machine.gemm_choice.cache_clear()
    yield
    machine.gemm_choice.cache_clear()


@pytest.mark.parametrize(("rates", "path"), [({"mkl": 100.0, "onednn": 120.0}, "onednn"),
                                             ({"mkl": 100.0, "onednn": 105.0}, "mkl"),
                                             ({"mkl": 150.0, "onednn": 100.0}, "mkl")])  # fmt: skip
def test_gemm_path_is_onednn_only_when_measured_clearly_faster(monkeypatch, fresh_gemm_choice, rates, path):
    if not machine.onednn_linear_available():
        pytest.skip("this torch has no oneDNN linear")
    monkeypatch.delenv("AIAYN_GEMM", raising=False)
    monkeypatch.setattr(machine, "_time_paths", lambda: rates)
    choice = machine.gemm_choice()
    assert (choice.path, choice.gflops) == (path, rates)


def test_gemm_path_can_be_forced(monkeypatch, fresh_gemm_choice):
    monkeypatch.setenv("AIAYN_GEMM", "mkl")
    monkeypatch.setattr(machine, "_time_paths", lambda: pytest.fail("forced: nothing to measure"))
    assert machine.gemm_choice().path == "mkl"


def test_a_bad_aiayn_gemm_is_one_line_naming_it(monkeypatch, fresh_gemm_choice, capsys):
    monkeypatch.setenv("AIAYN_GEMM", "openblas")
    with pytest.raises(ConfigError, match="AIAYN_GEMM='openblas': expected mkl or onednn"):
        machine.gemm_choice()
    machine.gemm_choice.cache_clear()
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "AIAYN_GEMM" in err[0]


def test_aiayn_info_prints_the_machine_and_json_for_scripts(monkeypatch, fresh_gemm_choice, capsys):
    monkeypatch.setattr(machine, "cpu_info", lambda: machine.parse_cpuinfo(EPYC, cores=2))
    monkeypatch.setattr(machine, "_time_paths", lambda: {"mkl": 135.0, "onednn": 193.0})
    monkeypatch.delenv("AIAYN_GEMM", raising=False)
    assert cli.main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cpu"]["model"] == "AMD EPYC 9R14" and report["cpu"]["bf16_hardware"] == "AVX512-BF16"
    assert report["torch"]["version"] == torch.__version__
    if machine.onednn_linear_available():
        assert report["gemm"]["path"] == "onednn" and report["gemm"]["gflops"] == {"mkl": 135.0, "onednn": 193.0}
    assert report["recommended_precision"] in ("bf16", "fp32")
    assert cli.main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "cpu:        AMD EPYC 9R14 (AMD), 2 cores for this process"
    assert [line.split(":")[0] for line in lines] == ["cpu", "flags", "bf16", "torch", "gemm", "gpus", "precision"]


def test_resolve_precision_keeps_a_given_one_and_a_recorded_one():
    cpu = torch.device("cpu")
    assert precision.resolve_precision("fp32", cpu, "bf16") == ("fp32", "")
    assert precision.resolve_precision("auto", cpu, "fp16")[0] == "fp16"
    assert precision.resolve_precision("auto", cpu, None)[0] == machine.recommended_precision(cpu)


def _config(out, *extra) -> RunConfig:
    return RunConfig.from_dict(parse_overrides([*TINY, "--train.out_dir", str(out), *extra]))


def test_precision_auto_is_recorded_and_a_resume_elsewhere_keeps_it(monkeypatch, tmp_path):
    """A run with precision auto on a bf16 machine writes bf16 into config.yaml; resumed on a machine that would
    pick fp32, it stays bf16 and ends with the weights of an uninterrupted bf16 run, bit for bit."""
    lines: list[str] = []
    monkeypatch.setattr(precision, "recommended_precision", lambda device: "bf16")
    first = Trainer(_config(tmp_path / "run", "--train.precision", "auto", "--train.max_steps", "8"), log=lines.append)
    assert first.run() == 0
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["precision"] == "bf16"
    assert any("precision bf16 (auto: bf16 hardware on this CPU" in line for line in lines)

    monkeypatch.setattr(precision, "recommended_precision", lambda device: "fp32")
    lines.clear()
    resumed = Trainer(_config(tmp_path / "run", "--train.precision", "auto"), resume="auto", log=lines.append)
    assert resumed.run() == 0
    assert resumed.config.train.precision == "bf16"
    assert any("(auto: the precision of the run being resumed)" in line for line in lines)
    assert Trainer(_config(tmp_path / "straight", "--train.precision", "bf16"), log=lambda _: None).run() == 0
    a, b = final_weights(tmp_path / "run"), final_weights(tmp_path / "straight")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
