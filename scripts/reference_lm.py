#!/usr/bin/python3
"""A plain PyTorch reference for the MoE-vs-dense comparison (docs/results.md).

Written from the model description alone, sharing no code with moe: a Mixtral-layout decoder (RMSNorm,
rotary attention, SwiGLU FFN, or 8 SwiGLU experts behind a softmax top-2 router with the Switch aux loss)
trained by torch.optim.AdamW. It reads the same data/brown/*.bin, draws the same training windows
(splitmix64, as train/data.cpp) and evaluates the same validation windows as `moe train`, so its losses
can be set beside ours step for step.

  /usr/bin/python3 scripts/reference_lm.py --model moe|dense --out runs/reference-moe [--steps 1500]

--world N runs it on N processes: start them with --rank 0..N-1 (gloo over 127.0.0.1); each trains its 1/N
of every global batch, and rank 0 writes the metrics. By default the whole model is data-parallel
(DistributedDataParallel, every rank holding every expert); --expert-parallel shards the MoE's experts over
the ranks instead, as moe does, with all_to_all_single carrying each token to its experts' rank and back,
and the other gradients averaged in one flat all_reduce. The two give the same losses to float32 rounding.
scripts/speed_vs_reference.sh sets both beside `moe train`.

--init-from DIR starts from the weights of a Hugging Face export of a moe checkpoint (`moe export`) instead
of its own random ones: with the same initial weights and batches, the two loss curves must agree until
floating-point rounding sets them apart, which checks the two implementations step for step.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

MASK = (1 << 64) - 1


def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def train_offsets(seed, step, batch, seq_len, num_tokens):
    key = splitmix64(seed ^ splitmix64(step))
    return [splitmix64((key + g) & MASK) % (num_tokens - seq_len) for g in range(batch)]


def windows(tokens, offsets, seq_len):
    x = np.stack([tokens[o:o + seq_len + 1] for o in offsets]).astype(np.int64)
    x = torch.from_numpy(x)
    return x[:, :-1], x[:, 1:]


class RMSNorm(torch.nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(torch.nn.Module):
    def __init__(self, d, heads, theta, seq_len):
        super().__init__()
        self.heads = heads
        self.q = torch.nn.Linear(d, d, bias=False)
        self.k = torch.nn.Linear(d, d, bias=False)
        self.v = torch.nn.Linear(d, d, bias=False)
        self.o = torch.nn.Linear(d, d, bias=False)
        hd = d // heads
        inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        ang = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv)
        ang = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)
        self.register_buffer("future", torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1), persistent=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        cos, sin = self.cos[:t], self.sin[:t]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        y = scores.masked_fill(self.future[:t, :t], float("-inf")).softmax(-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class SwiGLU(torch.nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.w1 = torch.nn.Linear(d, f, bias=False)
        self.w3 = torch.nn.Linear(d, f, bias=False)
        self.w2 = torch.nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class AllToAll(torch.autograd.Function):
    """Rows to ranks: send[r] rows go to rank r, recv[r] rows come from it; backward is the reverse."""

    @staticmethod
    def forward(ctx, x, send, recv):
        ctx.splits = (send, recv)
        out = x.new_empty((sum(recv), x.shape[1]))
        torch.distributed.all_to_all_single(out, x.contiguous(), recv, send)
        return out

    @staticmethod
    def backward(ctx, dy):
        send, recv = ctx.splits
        return AllToAll.apply(dy, recv, send), None, None


class MoE(torch.nn.Module):
    def __init__(self, d, f, experts, top_k, world=1, rank=0):
        super().__init__()
        self.gate = torch.nn.Linear(d, experts, bias=False)
        self.experts = torch.nn.ModuleList(SwiGLU(d, f) for _ in range(experts))
        self.top_k = top_k
        self.world, self.rank = world, rank  # experts sharded over `world` ranks when > 1

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs = self.gate(x).softmax(-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        if self.world > 1:
            out = self.exchange_and_run(x, weights, chosen)
        else:
            out = torch.zeros_like(x)
            for e, expert in enumerate(self.experts):
                token, slot = (chosen == e).nonzero(as_tuple=True)
                if token.numel():
                    out.index_add_(0, token, expert(x[token]) * weights[token, slot, None])
        n = probs.shape[-1]
        fraction = torch.zeros(n).index_add_(0, chosen.reshape(-1), torch.ones(chosen.numel())) / chosen.numel()
        aux = n * (fraction * probs.mean(0)).sum()
        return out.view(shape), aux

    def exchange_and_run(self, x, weights, chosen):
        n, local = len(self.experts), len(self.experts) // self.world
        order = chosen.reshape(-1).argsort(stable=True)
        counts = torch.bincount(chosen.reshape(-1), minlength=n)
        recv_counts = torch.empty_like(counts)
        torch.distributed.all_to_all_single(recv_counts, counts)  # [world * local]: from rank r, per expert
        send = counts.view(self.world, local).sum(1).tolist()
        recv_counts = recv_counts.view(self.world, local)
        x_recv = AllToAll.apply(x[order // self.top_k], send, recv_counts.sum(1).tolist())
        pieces = x_recv.split(recv_counts.reshape(-1).tolist())  # source rank major, local expert minor
        y = [None] * len(pieces)
        for j in range(local):
            mine = [r * local + j for r in range(self.world)]
            rows = torch.cat([pieces[i] for i in mine])
            if rows.shape[0]:
                out_j = self.experts[self.rank * local + j](rows)
            else:
                out_j = rows
            for i, part in zip(mine, out_j.split([pieces[i].shape[0] for i in mine])):
                y[i] = part
        y_sorted = AllToAll.apply(torch.cat(y), recv_counts.sum(1).tolist(), send)
        out = torch.zeros_like(x)
        return out.index_add_(0, order // self.top_k, y_sorted * weights.reshape(-1)[order, None])


class Block(torch.nn.Module):
    def __init__(self, a):
        super().__init__()
        self.norm1 = RMSNorm(a.hidden)
        self.attn = Attention(a.hidden, a.heads, 10000.0, a.seq_len)
        self.norm2 = RMSNorm(a.hidden)
        ep = a.world if a.expert_parallel else 1
        self.ffn = MoE(a.hidden, 512, 8, 2, ep, a.rank) if a.model == "moe" else SwiGLU(a.hidden, 1024)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        y = self.ffn(self.norm2(x))
        if isinstance(y, tuple):
            return x + y[0], y[1]
        return x + y, torch.zeros(())


class LM(torch.nn.Module):
    def __init__(self, a):
        super().__init__()
        self.embed = torch.nn.Embedding(256, a.hidden)
        self.blocks = torch.nn.ModuleList(Block(a) for _ in range(a.layers))
        self.norm = RMSNorm(a.hidden)
        self.head = torch.nn.Linear(a.hidden, 256, bias=False)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * a.layers) if name.endswith(("o.weight", "w2.weight")) else 0.02
                torch.nn.init.normal_(p, std=std)

    def forward(self, x, y):
        h = self.embed(x)
        aux = 0.0
        for block in self.blocks:
            h, a = block(h)
            aux = aux + a
        logits = self.head(self.norm(h))
        return F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1)), aux


def load_export(model, export_dir):
    """Copies a Mixtral-named export (moe export) into the model; every weight must be used."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "train"))
    from hf_forward import load
    _, weights = load(export_dir)
    names = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight",
             "lm_head.weight": "head.weight"}
    parts = {"input_layernorm": "norm1", "post_attention_layernorm": "norm2", "self_attn.q_proj": "attn.q",
             "self_attn.k_proj": "attn.k", "self_attn.v_proj": "attn.v", "self_attn.o_proj": "attn.o",
             "block_sparse_moe.gate": "ffn.gate", "block_sparse_moe.experts": "ffn.experts"}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, array in weights.items():
            target = names.get(name)
            if target is None:
                target = name.replace("model.layers.", "blocks.")
                for a, b in parts.items():
                    target = target.replace("." + a + ".", "." + b + ".")
            params.pop(target).copy_(torch.from_numpy(array))
    if params:
        raise SystemExit(f"{export_dir}: no weights for {sorted(params)}")


def sync_gradients(dense, expert, world):
    """DDP's average for the replicated parameters; an expert's gradient already sums every rank's tokens,
    each rank's loss being its own mean, so it is divided by the ranks alone."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in dense]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    for p, g in zip(dense, flat.split([p.numel() for p in dense])):
        p.grad = g.view_as(p)
    for p in expert:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad /= world


def clip_sharded(dense, expert, max_norm):
    """clip_grad_norm_ over the whole model, whose experts are split over the ranks."""
    sq = torch.stack([p.grad.pow(2).sum() for p in expert]).sum()
    torch.distributed.all_reduce(sq)
    sq = sq + torch.stack([p.grad.pow(2).sum() for p in dense]).sum()
    norm = sq.sqrt()
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for p in dense + expert:
        p.grad.mul_(scale)
    return norm


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=["moe", "dense"], required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--data", default="data/brown")
    p.add_argument("--init-from", help="a Hugging Face export of a moe checkpoint to start from")
    p.add_argument("--init-seed", type=int, default=1234, help="seed of the random initial weights")
    p.add_argument("--world", type=int, default=1, help="processes")
    p.add_argument("--expert-parallel", action="store_true", help="shard the experts over the processes")
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--port", type=int, default=29511)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    a.hidden, a.layers, a.heads, a.seq_len, a.batch = 256, 4, 4, 256, 16
    lr, min_lr, warmup, seed = 1e-3, 1e-4, 50, 1234
    torch.manual_seed(a.init_seed)
    train = np.memmap(os.path.join(a.data, "train.bin"), dtype="<u2", mode="r")
    val = np.memmap(os.path.join(a.data, "val.bin"), dtype="<u2", mode="r")
    last = len(val) - a.seq_len - 1
    vx, vy = windows(val, [i * last // 255 for i in range(256)], a.seq_len)

    if a.expert_parallel and (a.model != "moe" or a.world < 2 or 8 % a.world):
        raise SystemExit("--expert-parallel: needs --model moe and a --world of 2, 4 or 8")
    model = LM(a)
    if a.init_from:
        load_export(model, a.init_from)
    net = model
    if a.world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{a.port}", rank=a.rank,
                                             world_size=a.world)
    if a.expert_parallel:
        local = 8 // a.world
        # Every rank builds all 8 experts from the same seed (so the weights equal the data-parallel run's)
        # and trains its own `local` of them only.
        for block in model.blocks:
            for e, expert_module in enumerate(block.ffn.experts):
                expert_module.requires_grad_(e // local == a.rank)
        expert = [p_ for n_, p_ in model.named_parameters() if ".experts." in n_ and p_.requires_grad]
        dense = [p_ for n_, p_ in model.named_parameters() if ".experts." not in n_]
    elif a.world > 1:
        # Every rank builds the same weights from the same seed; gloo cannot broadcast the bool masks.
        masks = [n for n, b in model.named_buffers() if b.dtype == torch.bool]
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, masks)
        # An expert no token chose on this rank gets no gradient: DDP must look for unused parameters.
        net = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False, find_unused_parameters=True)
    per_rank = a.batch // a.world
    decay = [p for p in model.parameters() if p.dim() >= 2 and p.requires_grad]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), eps=1e-8)
    os.makedirs(a.out, exist_ok=True)
    log = open(os.path.join(a.out, "metrics.jsonl") if a.rank == 0 else os.devnull, "w")
    start = time.time()
    for step in range(1, a.steps + 1):
        if step <= warmup:
            rate = lr * step / warmup
        else:
            rate = min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * (step - warmup) / (a.steps - warmup)))
        for g in opt.param_groups:
            g["lr"] = rate
        offsets = train_offsets(seed, step, a.batch, a.seq_len, len(train))
        x, y = windows(train, offsets[a.rank * per_rank:(a.rank + 1) * per_rank], a.seq_len)
        loss, aux = net(x, y)
        opt.zero_grad(set_to_none=True)
        (loss + 0.01 * aux).backward()
        if a.expert_parallel:
            sync_gradients(dense, expert, a.world)
            norm = clip_sharded(dense, expert, 1.0)
        else:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        rec = {"kind": "train", "step": step, "loss": loss.item(), "grad_norm": norm.item(),
               "elapsed_s": time.time() - start}
        log.write(json.dumps(rec) + "\n")
        if step % 100 == 0 and (a.rank == 0 or a.expert_parallel):  # the experts' ranks evaluate together
            with torch.no_grad():
                ev = sum(model(vx[i:i + 16], vy[i:i + 16])[0].item() for i in range(0, 256, 16)) / 16
            log.write(json.dumps({"kind": "eval", "step": step, "loss": ev}) + "\n")
            if a.rank == 0:
                print(f"{a.model} step {step} train {loss.item():.4f} eval {ev:.4f} {time.time() - start:.0f}s",
                      flush=True)
        log.flush()


if __name__ == "__main__":
    main()
