"""Time the configurations of `kdna bench` in PyTorch, on the same machine, and print kdna/PyTorch ratios.

Optional: needs torch and torchvision; never part of the test path. Protocol as `kdna bench --latency
--train`: eval throughput of the network in eval mode without autograd, and whole training steps
(forward, cross-entropy, backward, SGD momentum 0.9 + weight decay), each after untimed warm-up, with a
device sync per iteration.

    python3 scripts/bench_torch.py --device cuda --batch-size 128 --res 224 --kdna-json kdna.jsonl

On CUDA, PyTorch runs convolutions in TF32 by default; `--fp32` turns that off (as
`NVIDIA_TF32_OVERRIDE=0` does), so both sides compute in float32 as kdna does.

`--kdna-json` takes the JSON lines that `kdna bench --latency --train --json` printed (one per
configuration) and adds the ratios: kdna eval img/s / PyTorch's, PyTorch step time / kdna's (above 1:
kdna is faster).
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kdna_ref  # noqa: E402

ARCHS = {
    "resnet18": lambda kdna, n: kdna_ref.resnet18(kdna, n),
    "resnet50": lambda kdna, n: kdna_ref.resnet50(kdna, n),
    "mobilenet_v2": lambda kdna, n: kdna_ref.mobilenet_v2(kdna, 1.0, n),
    "mobilenet_v2_1d2": lambda kdna, n: kdna_ref.mobilenet_v2(kdna, 0.5, n),
    "convnext_tiny": lambda kdna, n: kdna_ref.convnext_tiny(kdna, n),
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, iters, warmup, device):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def bench(arch, baseline, args, device):
    torch.manual_seed(0)
    model = ARCHS[arch](not baseline, args.num_classes).to(device)
    x = torch.randn(args.batch_size, 3, args.res, args.res, device=device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)

    model.eval()

    def eval_step():
        with torch.no_grad():
            model(x)

    eval_times = timed(eval_step, args.iter, args.warmup, device)

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def train_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    train_times = timed(train_step, args.iter, args.warmup, device)
    throughputs = [args.batch_size / t for t in eval_times]
    return {
        "arch": arch,
        "baseline": baseline,
        "batch": args.batch_size,
        "res": args.res,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "tf32": device.type == "cuda" and torch.backends.cudnn.allow_tf32,
        "eval_img_s": statistics.mean(throughputs),
        "eval_img_s_std": statistics.pstdev(throughputs),
        "train_step_s": statistics.mean(train_times),
        "train_step_s_std": statistics.pstdev(train_times),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--res", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--iter", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--kdna-json", type=Path, help="JSON lines from `kdna bench --latency --train --json`")
    parser.add_argument("--fp32", action="store_true", help="no TF32 on CUDA (PyTorch's default uses it for convs)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.fp32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    ours = {}
    if args.kdna_json:
        for line in args.kdna_json.read_text().splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                ours[(rec["arch"], rec["baseline"])] = rec

    print(f"{'network':<26}{'torch img/s':>12}{'torch step s':>14}{'kdna img/s':>12}{'kdna step s':>13}"
          f"{'eval ratio':>12}{'step ratio':>12}")
    for arch in args.arch:
        for baseline in (True, False):
            rec = bench(arch, baseline, args, device)
            name = f"{arch} {'baseline' if baseline else 'kernelDNA'}"
            line = f"{name:<26}{rec['eval_img_s']:>12.1f}{rec['train_step_s']:>14.4f}"
            k = ours.get((arch, baseline))
            if k:
                rec["eval_ratio"] = k["eval_img_s"] / rec["eval_img_s"]
                if k.get("train_step_s"):
                    rec["step_ratio"] = rec["train_step_s"] / k["train_step_s"]
                line += (f"{k['eval_img_s']:>12.1f}{k.get('train_step_s') or float('nan'):>13.4f}"
                         f"{rec['eval_ratio']:>12.3f}{rec.get('step_ratio', float('nan')):>12.3f}")
            print(line, flush=True)
            print(json.dumps(rec), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
