"""The network types A1111 v1.10's Lora extension loads, each turned into a weight delta for one module.

A module's factors (`keys.split_key` names) select its type, first match wins, in A1111's order:
LoRA/LoCon (`lora_up`+`lora_down`, optional `lora_mid` = CP/Tucker), LoHa, IA3, LoKr, full (`diff`), norm,
GLoRA, OFT/BOFT. Every module may also carry `alpha`, `scale`, `dora_scale` and `bias`.

Scale: the `scale` tensor if present, else alpha/dim when both are known (dim = the rank), else 1.
Delta: dW = mult * D(scale * raw), with D the identity, or DoRA's weight decomposition when `dora_scale`
is present: D(d) = (W + d) * m / |W + d| - W, the norm taken per input channel over the other axes.
Everything is computed in float32 from the current weight W."""
from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("lora", "loha", "ia3", "lokr", "full", "norm", "glora", "oft")
_READS_WEIGHT = ("ia3", "glora", "oft")


class NetworkTypeError(ValueError):
    """A module whose factors form no known network type, or do not fit the weight they target."""


@dataclass
class ModuleNetwork:
    """One module's part of a network file: its type and factors (CPU tensors, the file's dtype)."""

    kind: str
    factors: dict[str, torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.factors.values())

    def _get(self, name: str) -> torch.Tensor | None:
        return self.factors.get(name)

    @property
    def dim(self) -> int | None:
        f = self.factors
        if self.kind == "lora":
            return int(f["lora_down"].shape[0])
        if self.kind == "loha":
            return int(f["hada_w1_b"].shape[0])
        if self.kind == "lokr":
            if "lokr_w1_b" in f:
                return int(f["lokr_w1_b"].shape[0])
            if "lokr_w2_b" in f:
                return int(f["lokr_w2_b"].shape[0])
        return None

    def scale(self) -> float:
        if self.kind == "oft":
            return 1.0
        if "scale" in self.factors:
            return float(self.factors["scale"].float().item())
        alpha, dim = self.factors.get("alpha"), self.dim
        if alpha is not None and dim:
            return float(alpha.float().item()) / dim
        return 1.0

    def add_to(self, weight: torch.Tensor, multiplier: float, dyn: int | None = None) -> torch.Tensor | None:
        """Add this module's delta to `weight` in place; returns the bias delta (or None). A plain LoRA on
        a weight is one fused multiply-add in the weight's dtype (no full-size temporary); a plain LoHa or
        LoKr is one float32 multiply-add pass over the weight (`_fused_add`); every other case goes
        through `delta` in float32."""
        f = self.factors
        if self.kind == "lora" and not ({"lora_mid", "dora_scale", "bias"} & f.keys()):
            up, down = f["lora_up"].flatten(1), f["lora_down"].flatten(1)
            if dyn is not None:
                up, down = up[:, :dyn], down[:dyn]
            if up.shape[0] * down.shape[1] == weight.numel():
                w2 = weight.view(up.shape[0], down.shape[1])
                w2.addmm_(up.to(weight.device, weight.dtype), down.to(weight.device, weight.dtype),
                          alpha=self.scale() * multiplier)
                return None
        if (self.kind in ("loha", "lokr") and not ({"dora_scale", "bias", "hada_t1", "lokr_t2"} & f.keys())
                and _fused_add(self.kind, f, weight, self.scale() * multiplier)):
            return None
        dw, db = self.delta(weight, multiplier, dyn)
        weight.add_(dw.to(weight.dtype))
        return db

    def delta(self, weight: torch.Tensor, multiplier: float, dyn: int | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(dW in float32 shaped like `weight`, bias delta or None)."""
        f = {k: v.to(weight.device, torch.float32) for k, v in self.factors.items()}
        # only IA3, GLoRA, OFT and DoRA read W's values: the others skip a full-size float32 copy
        w = weight.detach()
        if self.kind in _READS_WEIGHT or "dora_scale" in f:
            w = w.float()
        raw, bias = _RAW[self.kind](f, w, dyn)
        if "bias" in f:
            raw = raw.reshape(f["bias"].shape) + f["bias"]
        if w.dim() == 4 and w.shape[1] == 9 and raw.numel() * 9 == w.numel() * 4:
            # a 4-channel conv_in delta on an inpainting UNet: the extra 5 input channels stay as they are
            four = raw.reshape(w.shape[0], 4, *w.shape[2:])
            raw = torch.cat([four, four.new_zeros(w.shape[0], 5, *w.shape[2:])], dim=1)
        if raw.numel() != w.numel():
            raise NetworkTypeError(f"{self.kind} delta of shape {tuple(raw.shape)} does not fit a weight of "
                                   f"shape {tuple(w.shape)}")
        if bias is not None:
            bias = bias * multiplier
        if "dora_scale" in f:
            return _dora(raw.reshape(w.shape) * self.scale(), w, f["dora_scale"]) * multiplier, bias
        raw = raw.reshape(w.shape)
        ptr = raw.untyped_storage().data_ptr()
        if any(v.untyped_storage().data_ptr() == ptr for v in f.values()):  # full's `diff`: the cache's
            return raw * (self.scale() * multiplier), bias
        return raw.mul_(self.scale() * multiplier), bias


def _fused_add(kind: str, f: dict[str, torch.Tensor], weight: torch.Tensor, coef: float) -> bool:
    """Add coef x a plain LoHa or LoKr delta to `weight` in one multiply-add pass: the factor products in
    float32, then W += coef * w1 * w2 (LoHa) or W[(p, r), (q, c)] += coef * w1[p, q] * w2[r, c] (LoKr's
    Kronecker product, on W viewed as (a, o / a, b, cols / b)), computed in float32 and rounded once to
    W's dtype. False (nothing done) when the shapes do not line up; `delta` then handles the module."""
    def get(name: str) -> torch.Tensor:
        return f[name].to(weight.device, torch.float32)

    if not weight.is_contiguous():
        return False
    if kind == "loha":
        w1 = get("hada_w1_a").flatten(1) @ get("hada_w1_b").flatten(1)
        w2 = get("hada_w2_a").flatten(1) @ get("hada_w2_b").flatten(1)
        if w1.shape != w2.shape or w1.numel() != weight.numel():
            return False
        weight.view(w1.shape).addcmul_(w1, w2, value=coef)
        return True
    if kind == "lokr":
        w1 = get("lokr_w1") if "lokr_w1" in f else get("lokr_w1_a") @ get("lokr_w1_b")
        w2 = get("lokr_w2") if "lokr_w2" in f else get("lokr_w2_a") @ get("lokr_w2_b")
        if w1.dim() != 2:
            return False
        w2 = w2.flatten(1)
        (a, b), (o2, c2) = w1.shape, w2.shape
        if a * o2 * b * c2 != weight.numel() or weight.shape[0] != a * o2:
            return False
        weight.view(a, o2, b, c2).addcmul_(w1[:, None, :, None], w2[None, :, None, :], value=coef)
        return True
    return False


def classify(factors: dict[str, torch.Tensor]) -> ModuleNetwork:
    """The type of one module's factors, in A1111's order (first match wins)."""
    f = factors
    if "lora_up" in f and "lora_down" in f:
        kind = "lora"
    elif all(k in f for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")):
        kind = "loha"
    elif "weight" in f:
        kind = "ia3"
    elif ("lokr_w1" in f or "lokr_w1_a" in f) and ("lokr_w2" in f or "lokr_w2_a" in f):
        kind = "lokr"
    elif "diff" in f:
        kind = "full"
    elif "w_norm" in f and "b_norm" in f:
        kind = "norm"
    elif all(k in f for k in ("a1", "a2", "b1", "b2")):
        kind = "glora"
    elif "oft_blocks" in f or "oft_diag" in f:
        kind = "oft"
    else:
        raise NetworkTypeError(f"factors {sorted(f)} form no known network type")
    return ModuleNetwork(kind, dict(f))


def _tucker(core: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """CP/Tucker rebuild: dW[o, i, kh, kw] = sum_ab core[a, b, kh, kw] up[o, a] down[b, i];
    core (r, r, kh, kw), up (out, r), down (r, in)."""
    return torch.einsum("a b k l, o a, b i -> o i k l", core, up, down)


def _lora(f: dict[str, torch.Tensor], w: torch.Tensor, dyn: int | None):
    up, down, mid = f["lora_up"], f["lora_down"], f.get("lora_mid")
    if dyn is not None:
        up, down = up[:, :dyn], down[:dyn]
        mid = mid[:dyn, :dyn] if mid is not None else None
    if mid is not None:
        return _tucker(mid, up.flatten(1), down.flatten(1)), None
    return up.flatten(1) @ down.flatten(1), None


def _loha(f: dict[str, torch.Tensor], w: torch.Tensor, dyn: int | None):
    if "hada_t1" in f and "hada_t2" in f:
        # LyCORIS CP layout: w*_a is (r, out), w*_b is (r, in)
        w1 = _tucker(f["hada_t1"], f["hada_w1_a"].T, f["hada_w1_b"])
        w2 = _tucker(f["hada_t2"], f["hada_w2_a"].T, f["hada_w2_b"])
    else:
        w1 = f["hada_w1_a"] @ f["hada_w1_b"]
        w2 = f["hada_w2_a"] @ f["hada_w2_b"]
    return w1 * w2, None


def _ia3(f: dict[str, torch.Tensor], w: torch.Tensor, dyn: int | None):
    vec = f["weight"]
    if "on_input" in f and bool(f["on_input"].flatten()[0]):
        shape = [1, -1] + [1] * (w.dim() - 2)
    else:
        shape = [-1] + [1] * (w.dim() - 1)
    return w * vec.reshape(shape), None


def _lokr(f: dict[str, torch.Tensor], w: torch.Tensor, dyn: int | None):
    w1 = f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]
    if "lokr_w2" in f:
        w2 = f["lokr_w2"]
    elif "lokr_t2" in f:
        w2 = _tucker(f["lokr_t2"], f["lokr_w2_a"].T, f["lokr_w2_b"])
    else:
        w2 = f["lokr_w2_a"] @ f["lokr_w2_b"]
    if w.dim() == 4 and w1.dim() == 2:
        w1 = w1[:, :, None, None]
    if w.dim() == 4 and w2.dim() == 2:
        w2 = w2[:, :, None, None]
    return torch.kron(w1, w2), None


def _full(f: dict[str, torch.Tensor], w: torch.Tensor, dyn: int | None):
    return f["diff"], f.get("diff_b")


def _norm(f: dict[str, torch.Tensor], w: torch.Tensor, dyn: int | None):
    return f["w_norm"], f["b_norm"]


def _glora(f: dict[str, torch.Tensor], w: torch.Tensor, dyn: int | None):
    w2 = w.flatten(1)
    return f["b2"].flatten(1) @ f["b1"].flatten(1) + (w2 @ f["a2"].flatten(1)) @ f["a1"].flatten(1), None


def _oft(f: dict[str, torch.Tensor], w: torch.Tensor, dyn: int | None):
    """R W - W, R orthogonal acting on the output rows; `rescale` then scales the output rows.

    kohya / LyCORIS `oft_blocks` hold per-block matrices whose skew part Q (the norm of all of them
    together clamped to the constraint alpha x out_dim, when that is not 0) gives R = (I+Q)(I-Q)^-1 per
    block (Cayley); old LyCORIS `oft_diag` blocks are R itself. 3-D blocks (n, b, b) are OFT: each block
    acts as R^T on its b rows. 4-D blocks (m, n, b, b) are BOFT, as A1111 v1.10 applies them: m butterfly
    stages, stage i multiplying each group of b rows by its R after the rows are interleaved with
    stride k = 2^i * b/2 (see `_butterfly`)."""
    if "oft_blocks" in f:
        q = f["oft_blocks"]
        if q.dim() not in (3, 4) or q.shape[-1] != q.shape[-2]:
            raise NetworkTypeError(f"OFT blocks of shape {tuple(q.shape)} are not square blocks")
        q = q - q.transpose(-1, -2)
        constraint = float(f["alpha"]) * w.shape[0] if "alpha" in f else 0.0
        if constraint != 0:
            norm = torch.norm(q.flatten())
            q = q * (torch.clamp(norm, max=constraint) + 1e-8) / (norm + 1e-8)
        eye = torch.eye(q.shape[-1], device=q.device)
        r = (eye + q) @ torch.linalg.inv(eye - q)
    else:
        r = f["oft_diag"]
        if r.dim() != 3:
            raise NetworkTypeError(f"OFT blocks of shape {tuple(r.shape)} are not supported")
    rows = w.flatten(1)
    if r.dim() == 4:
        merged = _butterfly(r, rows)
    else:
        n, b = r.shape[0], r.shape[1]
        if n * b != w.shape[0]:
            raise NetworkTypeError(f"OFT blocks {n}x{b} do not cover {w.shape[0]} output rows")
        merged = torch.einsum("k n m, k n c -> k m c", r, rows.reshape(n, b, -1)).reshape(w.shape[0], -1)
    if "rescale" in f:
        merged = merged * f["rescale"].reshape(w.shape[0], 1)
    return merged.reshape(w.shape) - w, None


def _butterfly(r: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """BOFT's product of m butterfly stages on `rows` (out, c); r is (m, n, b, b). Stage i views the rows as
    (groups, 2, k) with k = 2^i * (b // 2), swaps the last two axes (so each run of b rows pairs rows k
    apart), multiplies every run by its block (R @ run), and puts the rows back in place."""
    m, n, b = r.shape[0], r.shape[1], r.shape[2]
    out = rows.shape[0]
    if n * b != out:
        raise NetworkTypeError(f"BOFT blocks {n}x{b} do not cover {out} output rows")
    x = rows
    for i in range(m):
        k = 2 ** i * (b // 2)
        if k == 0 or out % (2 * k):
            raise NetworkTypeError(f"BOFT stage {i + 1} of {m} (stride {k}) does not divide {out} "
                                   "output rows")
        x = x.reshape(out // (2 * k), 2, k, -1).transpose(1, 2).reshape(n, b, -1)
        x = torch.einsum("d i j, d j c -> d i c", r[i], x)
        x = x.reshape(out // (2 * k), k, 2, -1).transpose(1, 2).reshape(out, -1)
    return x


def _dora(delta: torch.Tensor, w: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    merged = w + delta
    per_input = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
    per_input = per_input.reshape(merged.shape[1], *[1] * (merged.dim() - 1)).transpose(0, 1)
    return merged * (magnitude.reshape(per_input.shape) / per_input) - w


_RAW = {"lora": _lora, "loha": _loha, "ia3": _ia3, "lokr": _lokr, "full": _full, "norm": _norm,
        "glora": _glora, "oft": _oft}
