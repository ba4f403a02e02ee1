"""RevNet's activation memory against depth (issue 7): bytes the forward pass keeps for the
backward pass, for RevNet with its memory-saving backward and for the same network under
ordinary autograd, as the third stage grows from 2 to 24 reversible units. Device-agnostic:
counted with ``torch.autograd.graph.saved_tensors_hooks`` (each storage once), so CPU numbers
are the same as a GPU's. Also times one forward+backward (CPU) and checks the float32
gradient agreement between the two.

    python bench/revnet_memory.py
"""
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._machine import machine_info  # noqa: E402
from harness.backbones.revnet import RevNet  # noqa: E402

BATCH, SIZE, WIDTH = 32, 32, 0.5


def measure(layers, memory_saving: bool) -> tuple[float, float, RevNet]:
    torch.manual_seed(0)
    net = RevNet(layers, width=WIDTH, small_input=True, memory_saving=memory_saving).train()
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = net(x).square().mean()
    loss.backward()
    return sum(seen.values()) / 2**20, time.perf_counter() - start, net


def main() -> None:
    torch.set_num_threads(2)
    print(f"machine: {machine_info()}")
    print(f"batch {BATCH} x 3 x {SIZE} x {SIZE}, width {WIDTH}; stage-3 units varied\n")
    print("| stage layout | parameters | saved for backward, reversible | saved, ordinary autograd | time, reversible | time, ordinary |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n3 in (2, 6, 12, 24):
        layers = (3, 4, n3, 3)
        rev_mb, rev_s, net = measure(layers, True)
        plain_mb, plain_s, _ = measure(layers, False)
        params = sum(p.numel() for p in net.parameters()) / 1e6
        print(f"| {layers} | {params:.2f} M | {rev_mb:.1f} MiB | {plain_mb:.1f} MiB | {rev_s:.2f} s | {plain_s:.2f} s |")
    # float32 agreement of the two backward passes (trained-like BN: random affine parameters)
    _, _, a = measure((3, 4, 6, 3), True)
    b = copy.deepcopy(a)
    b.memory_saving = False
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in list(a.modules()):
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    b.load_state_dict(a.state_dict())
    for p in list(a.parameters()) + list(b.parameters()):
        p.grad = None
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    a(x).square().mean().backward()
    b(x).square().mean().backward()
    rel = max(((pa.grad - pb.grad).abs().max() / pb.grad.abs().max().clamp_min(1e-12)).item()
              for pa, pb in zip(a.parameters(), b.parameters()))
    print(f"\nfloat32, RevNet-50 layout: largest per-tensor gradient difference (relative to that tensor's max): {rel:.2e}")


if __name__ == "__main__":
    main()
