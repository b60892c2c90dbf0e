"""build_model: what allocating a model costs beyond its tensors."""

import subprocess
import sys


def test_building_a_model_imports_neither_sympy_nor_torch_fx(tiny_llama_dir):
    """Module.to_empty on meta tensors imports torch.fx's symbolic shapes and sympy (~29 MiB resident)."""
    code = (
        "import sys\n"
        "from rusteeze.loader.model_loader import load_model_from_path\n"
        f"load_model_from_path({str(tiny_llama_dir)!r}, device='cpu', kernel_backend='torch')\n"
        "print(sorted(m for m in ('sympy', 'torch.fx.experimental.symbolic_shapes') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
