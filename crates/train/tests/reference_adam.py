"""Reference for tests/adam.rs: torch.optim.Adam on a fixed quadratic.

Run: python crates/train/tests/reference_adam.py > crates/train/tests/adam_golden.json
"""
import json
import torch

torch.set_default_dtype(torch.float64)
w = torch.tensor([1.0, -2.0, 0.5, 3.0], requires_grad=True)
t = torch.tensor([0.3, 0.1, -0.7, 2.0])
c = torch.tensor([1.0, 10.0, 0.1, 3.0])
opt = torch.optim.Adam([w], lr=0.1, betas=(0.5, 0.999), eps=1e-8)
steps = []
for _ in range(6):
    opt.zero_grad()
    loss = ((w - t) ** 2 * c).sum()
    loss.backward()
    opt.step()
    steps.append(w.detach().tolist())
print(json.dumps({"w0": [1.0, -2.0, 0.5, 3.0], "t": t.tolist(), "c": c.tolist(), "lr": 0.1,
                  "beta1": 0.5, "beta2": 0.999, "eps": 1e-8, "steps": steps}, indent=1))
