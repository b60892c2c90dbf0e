"""The machine line printed with every benchmark table."""

from rusteeze.bench import machine


def test_cpu_line_names_the_model_and_only_the_kernel_flags(tmp_path, monkeypatch):
    fake = tmp_path / "cpuinfo"
    fake.write_text("model name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n\nflags\t: other\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(fake if p == "/proc/cpuinfo" else p, *a, **k))
    line = machine.cpu_line()
    assert line.startswith("Test CPU 9000, ")
    assert line.endswith("flags: avx2 avx512f avx512_vnni")


def test_unreadable_cpuinfo_still_gives_a_line(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("no /proc")

    monkeypatch.setattr("builtins.open", refuse)
    assert machine.cpu_flags() == ("unknown CPU", set())
    assert "unknown CPU" in machine.cpu_line()
