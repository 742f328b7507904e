"""Host facts read ARM boards correctly (CPU by implementer and part, NEON/dot product/i8mm, the board's
model) and say so when an ARM process runs emulated on an x86 kernel."""

from __future__ import annotations

from factory.lineage import host_info

PI4 = """processor	: 0
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3

processor	: 1
Features	: fp asimd evtstrm crc32 cpuid
CPU part	: 0xd08
"""

GRAVITON3 = """processor	: 0
BogoMIPS	: 2100.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop \
sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x1
CPU part	: 0xd40
CPU revision	: 1
"""

X86 = """processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Processor
flags		: fpu sse4_2 avx avx2 avx512f avx512_vnni
"""


def test_a_raspberry_pi_4_reads_as_a_cortex_a72_with_neon_and_no_dot_product():
    facts = host_info(PI4, machine="aarch64", board="Raspberry Pi 4 Model B Rev 1.4")
    assert facts["cpu"] == "ARM Cortex-A72 (Raspberry Pi 4 Model B Rev 1.4)"
    assert facts["neon"] and not facts["dotprod"] and not facts["i8mm"]
    assert facts["flags"] == ["asimd"] and "vnni" not in facts


def test_an_arm_server_core_reads_with_its_int8_features():
    facts = host_info(GRAVITON3, machine="aarch64", board="")
    assert facts["cpu"] == "ARM Neoverse-V1"
    assert facts["dotprod"] and facts["i8mm"] and {"sve", "bf16", "asimdhp"} <= set(facts["flags"])


def test_an_emulated_arm_process_does_not_pretend_to_know_its_cpu():
    facts = host_info(X86, machine="aarch64")
    assert facts["emulated"] is True and facts["cpu"].startswith("emulated aarch64 on Intel")
    assert facts["flags"] == [] and facts["dotprod"] is None


def test_x86_keeps_its_vnni_and_avx512_facts():
    facts = host_info(X86, machine="x86_64")
    assert facts["cpu"] == "Intel(R) Xeon(R) Processor" and facts["vnni"] and facts["avx512"]
    assert "avx512_vnni" in facts["flags"] and "emulated" not in facts
